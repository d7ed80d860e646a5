from splatfacto_dist.reporting.profiling import PhaseTimer


def run(timer: PhaseTimer, steps: range) -> None:
    for step in steps:
        timer.begin_step(step)
        with timer.phase("backward"):
            pass
        timer.end_step()


def test_samples_every_kth_step_but_never_the_first_step_of_a_run():
    timer = PhaseTimer(5)
    run(timer, range(0, 11))
    assert timer.sampled == 2  # steps 5 and 10; step 0 pays one-time start-up costs
    timer.reset(5)
    run(timer, range(10, 21))  # a resumed run: its first step (10) is skipped too
    assert timer.sampled == 2  # steps 15 and 20
    assert set(timer.per_step_ms()) == {"backward", "step", "other"}


def test_disabled_timer_samples_nothing():
    timer = PhaseTimer(0)
    run(timer, range(0, 5))
    assert timer.sampled == 0 and not timer.enabled
