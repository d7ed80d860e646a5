"""Stock `ns-train`, as the benchmark's baseline: the same training, plus two measurements.

The final test metrics are computed after the last step (stock nerfstudio only evaluates on
multiples of --steps-per-eval-all-images), exactly as splatfacto-dist's --eval-all-images-at-end
does, and the peak host memory is printed in the line format splatfacto-dist's ranks use.
Usage: python -m splatfacto_dist.bench_stock <ns-train arguments>
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys


def _print_peak_host_memory() -> None:
    print(f"rank 0: peak host {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB", flush=True)


def main() -> None:
    from nerfstudio.engine.trainer import Trainer

    from splatfacto_dist.trainer import eval_all_images_at_end

    after_train = Trainer._after_train

    def _after_train(self: Trainer) -> None:
        eval_all_images_at_end(self)
        after_train(self)

    Trainer._after_train = _after_train  # type: ignore[method-assign]
    atexit.register(_print_peak_host_memory)
    sys.argv = ["ns-train", *sys.argv[1:]]
    runpy.run_module("nerfstudio.scripts.train", run_name="__main__")


if __name__ == "__main__":
    main()
