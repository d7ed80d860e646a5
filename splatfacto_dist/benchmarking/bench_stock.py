"""Stock `ns-train`, as the benchmark's baseline: the same training, plus two measurements.

The final test metrics are computed after the last step (stock nerfstudio only evaluates on
multiples of --steps-per-eval-all-images), exactly as splatfacto-dist's --eval-all-images-at-end
does, and the peak host memory goes into the rank record splatfacto-dist's ranks write
(`records.py`); the peak GPU memory is the training's, from its events, as before.
Usage: python -m splatfacto_dist.benchmarking.bench_stock <ns-train arguments>
"""

from __future__ import annotations

import resource
import runpy
import sys


def main() -> None:
    from nerfstudio.engine.trainer import Trainer

    from splatfacto_dist.engine.trainer import eval_all_images_at_end
    from splatfacto_dist.reporting.records import write_rank_record

    after_train = Trainer._after_train

    def _after_train(self: Trainer) -> None:
        eval_all_images_at_end(self)
        after_train(self)
        write_rank_record(self.base_dir, 0, {"peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})

    Trainer._after_train = _after_train  # type: ignore[method-assign]
    sys.argv = ["ns-train", *sys.argv[1:]]
    runpy.run_module("nerfstudio.scripts.train", run_name="__main__")


if __name__ == "__main__":
    main()
