import subprocess

from nerfstudio.plugins.registry import discover_methods

from conftest import tool
from splatfacto_dist.datamanager import ShardedFullImageDatamanagerConfig
from splatfacto_dist.model import SplatfactoDistModelConfig
from splatfacto_dist.trainer import DistTrainerConfig


def test_method_is_discovered_through_nerfstudio_registry():
    methods, descriptions = discover_methods()
    config = methods["splatfacto-dist"]
    assert config.method_name == "splatfacto-dist"
    assert isinstance(config, DistTrainerConfig)
    assert isinstance(config.pipeline.model, SplatfactoDistModelConfig)
    assert isinstance(config.pipeline.datamanager, ShardedFullImageDatamanagerConfig)
    assert "GPU" in descriptions["splatfacto-dist"]


def test_ns_train_lists_and_helps_the_method():
    listing = subprocess.run([tool("ns-train"), "--help"], capture_output=True, text=True)
    assert listing.returncode == 0 and "splatfacto-dist" in listing.stdout
    helped = subprocess.run([tool("ns-train"), "splatfacto-dist", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "--pipeline.datamanager.cameras-per-rank" in helped.stdout
    assert "--verify-replicas-every" in helped.stdout
