import subprocess

from conftest import tool
from nerfstudio.plugins.registry import discover_methods

from splatfacto_dist.data.datamanager import ShardedFullImageDatamanagerConfig
from splatfacto_dist.engine.trainer import DistTrainerConfig
from splatfacto_dist.models.model import SplatfactoDistModelConfig


def test_method_is_discovered_through_nerfstudio_registry():
    methods, descriptions = discover_methods()
    config = methods["splatfacto-dist"]
    assert config.method_name == "splatfacto-dist"
    assert isinstance(config, DistTrainerConfig)
    assert isinstance(config.pipeline.model, SplatfactoDistModelConfig)
    assert isinstance(config.pipeline.datamanager, ShardedFullImageDatamanagerConfig)
    assert "GPU" in descriptions["splatfacto-dist"]


def test_ns_train_lists_and_helps_the_method():
    listing = subprocess.run([*tool("ns-train"), "--help"], capture_output=True, text=True)
    assert listing.returncode == 0 and "splatfacto-dist" in listing.stdout
    helped = subprocess.run([*tool("ns-train"), "splatfacto-dist", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "--pipeline.datamanager.cameras-per-rank" in helped.stdout
    assert "--verify-replicas-every" in helped.stdout


def test_our_launchers_short_parse_of_splatfacto_dist_equals_ns_trains_parse():
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    from splatfacto_dist.launching.launch import parse

    for options in (
        ["colmap", "--data", "scene"],
        [
            "--vis",
            "tensorboard",
            "--max-num-iterations",
            "123",
            "--machine.device-type",
            "cpu",
            "--machine.num-devices",
            "2",
            "--pipeline.model.seed",
            "5",
            "--pipeline.datamanager.cameras-per-rank",
            "2",
            "--batch-optimizer-scaling",
            "linear",
            "nerfstudio-data",
            "--data",
            "scene",
            "--downscale-factor",
            "2",
        ],
    ):
        ours = parse(["splatfacto-dist", *options])
        assert isinstance(ours, DistTrainerConfig)
        assert ours == tyro.cli(AnnotatedBaseConfigUnion, args=["splatfacto-dist", *options])
    assert parse(["splatfacto", "colmap", "--data", "scene"]).method_name == "splatfacto"  # other methods: full union


def test_splatfacto_dist_big_has_stock_splatfacto_bigs_settings():
    """Users of splatfacto-big switch by name: every model field and optimizer setting equals stock's."""
    import dataclasses

    from nerfstudio.configs.method_configs import method_configs

    from splatfacto_dist.launching.launch import parse

    methods, _ = discover_methods()
    ours, stock = methods["splatfacto-dist-big"], method_configs["splatfacto-big"]
    for field in dataclasses.fields(stock.pipeline.model):
        if field.name != "_target":
            assert getattr(ours.pipeline.model, field.name) == getattr(stock.pipeline.model, field.name), field.name
    assert ours.optimizers.keys() == stock.optimizers.keys()
    for name, group in stock.optimizers.items():
        assert ours.optimizers[name]["optimizer"] == group["optimizer"], name
        assert ours.optimizers[name]["scheduler"] == group["scheduler"], name
    assert methods["splatfacto-dist"].pipeline.model.densify_grad_thresh != ours.pipeline.model.densify_grad_thresh
    parsed = parse(["splatfacto-dist-big", "colmap", "--data", "scene"])
    assert parsed.pipeline.model == ours.pipeline.model and parsed.optimizers == ours.optimizers
