"""The experiments' command lines: bad devices, another command's run folder, Ctrl-C, plotting few paths."""

from __future__ import annotations

import pytest
import torch

from hybrid_node import cli
from hybrid_node.experiments import spiral_demo


def exit_status(argv: list[str]) -> int:
    """``hybrid-node argv``'s exit status: argparse's usage errors raise SystemExit, the others return."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def commands_with(option: str) -> list[str]:
    """The subcommands whose parser takes ``option``."""
    found = []
    for name in cli.SUBCOMMANDS:
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        if option in sub._option_string_actions:
            found.append(name)
    return found


DEVICE_COMMANDS = commands_with("--device")


def test_the_commands_with_a_device_option_are_found():
    assert {"mnist", "nfe"} <= set(DEVICE_COMMANDS)


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
@pytest.mark.parametrize(
    ("device", "message"), [("cuda", "no CUDA device is available here"), ("foo", "unknown device")]
)
def test_a_device_this_machine_lacks_is_a_usage_error(command, device, message, monkeypatch, tmp_path, capsys):
    # `mnist --device cuda` on a CPU-only torch ended in an AssertionError traceback ("Torch not compiled
    # with CUDA enabled") once the data moved there; `--device foo` in a RuntimeError traceback.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "run"
    assert exit_status([command, "--device", device, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "argument --device" in err and message in err
    assert not out.exists()  # refused while parsing: nothing is made or trained


# Tiny settings, so that a command that did not refuse the folder ends in seconds (they shape what it would
# train, not whether the folder is refused).
TINY = {
    "demo": ["--iters", "2"],
    "anode": ["--iters", "2", "--hidden", "4", "--tasks", "g1d"],
    "cnf": ["--quick", "--iters", "2", "--hidden", "4", "--width", "2", "--n-test", "16", "--grid", "4"],
    "spirals": ["--quick", "--iters", "2", "--rnn-iters", "2", "--n", "30", "--models", "rnn", "--no-plots"],
    "sde": ["--iters", "2", "--n-paths", "4"],
    "mnist": ["--models", "resnet", "--iters", "1", "--channels", "2", "--test-subset", "8", "--threads", "1"],
    "nfe": ["--iters", "1", "--channels", "2", "--eval-batch", "4", "--tolerances", "1e-1", "--threads", "1"],
}


@pytest.fixture(scope="module")
def hnn_run(tmp_path_factory):
    """The folder of a finished tiny hnn run (results.json and two checkpoints)."""
    out = tmp_path_factory.mktemp("hnn") / "run"
    argv = ["hnn", "--tasks", "spring", "--iters", "2", "--hidden", "4", "--trajectories", "2"]
    assert cli.main([*argv, "--rollout-factor", "1", "--step-size", "0.1", "--no-progress", "--out", str(out)]) == 0
    return out


def snapshot(folder):
    """Every file under ``folder`` with its bytes: what another command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("with_results", [True, False], ids=["finished", "checkpoints only"])
@pytest.mark.parametrize("command", sorted(TINY))
def test_resume_of_another_commands_run_is_refused_by_name(command, with_results, hnn_run, tmp_path, capsys):
    # `spirals --resume` and `nfe --resume` on an hnn folder trained and wrote their own checkpoints into it;
    # the others refused, listing every setting of the hnn run as different (or finding "nothing to resume").
    # Without results.json (a run stopped before its end) the command is read from the checkpoints.
    out = tmp_path / "run"
    out.mkdir()
    for name, data in snapshot(hnn_run).items():
        if with_results or name.startswith("checkpoints"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    before = snapshot(out)
    assert exit_status([command, *TINY[command], "--no-progress", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "this folder holds an hnn run" in err and "hybrid-node hnn --resume" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["demo", "mnist"])
def test_a_new_run_into_another_commands_folder_is_refused_by_name(command, hnn_run, tmp_path, capsys):
    # mnist looks for its own checkpoints only, so a new mnist run wrote its results.json over the hnn run's;
    # demo refused, but called the hnn run "a demo run".
    out = tmp_path / "run"
    out.mkdir()
    for name, data in snapshot(hnn_run).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    before = snapshot(out)
    assert exit_status([command, *TINY[command], "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds an hnn run; a new" in err and snapshot(out) == before


def test_the_same_command_still_resumes_its_run(hnn_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name, data in snapshot(hnn_run).items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    argv = ["hnn", "--tasks", "spring", "--iters", "2", "--hidden", "4", "--trajectories", "2"]
    assert (
        cli.main([*argv, "--rollout-factor", "1", "--step-size", "0.1", "--no-progress", "--resume", "--out", str(out)])
        == 0
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--method", "leapfrog"],
        ["--method", "symplectic_euler"],
        ["--method", "yoshida4"],
        ["--method", "yoshida6"],
        ["--method", "scipy_solver"],
    ],
    ids=lambda a: " ".join(a),
)
def test_demo_refuses_a_method_it_cannot_train_with(argv, tmp_path, capsys):
    # The symplectic methods need a (q, p) state and ended the first step with a ValueError traceback (exit 1);
    # scipy_solver without --adjoint with a RuntimeError traceback. cnf refuses both while checking its settings.
    out = tmp_path / "run"
    assert exit_status(["demo", *argv, "--iters", "1", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"--method {argv[1]}" in err and not out.exists()


def test_demo_takes_scipy_solver_with_the_adjoint():
    s = spiral_demo.DemoSettings(method="scipy_solver", adjoint=True, iters=1, test_every=1, data_size=50)
    assert len(spiral_demo.train(s, progress=False)["history"]["loss"]) == 1


@pytest.mark.parametrize("n_paths", [1, 3, 5])
def test_sde_plots_as_many_series_as_it_has(n_paths, monkeypatch, tmp_path):
    # With --n-paths 1, 2 or 3 the posterior plot, which always drew four series, ended the finished run
    # with an IndexError.
    from hybrid_node.experiments import latent_sde

    panels = {}
    save = latent_sde.save_figure

    def counting_save(fig, path, **kwargs):
        panels[path.name] = len(fig.axes)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(latent_sde, "save_figure", counting_save)
    out = tmp_path / "run"
    argv = ["sde", "--n-paths", str(n_paths), "--iters", "1", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    assert panels["posterior_samples.png"] == min(4, n_paths)
    assert (out / "posterior_samples.png").stat().st_size > 0


# Each command on a budget of a few steps, checkpointed at every step. spirals is left out of the resumed half
# of the test: its setup (validation series, the Bayes-optimal floor) takes a minute on a busy machine.
INTERRUPTIBLE = {
    "demo": ["--iters", "4"],
    "anode": ["--iters", "4", "--hidden", "4", "--tasks", "g1d"],
    "cnf": ["--quick", "--iters", "4", "--hidden", "4", "--width", "2", "--n-test", "16", "--grid", "4"],
    "hnn": ["--tasks", "spring", "--iters", "4", "--hidden", "4", "--trajectories", "2", "--rollout-factor", "1"],
    "sde": ["--iters", "4", "--n-paths", "4"],
    "spirals": ["--n", "10", "--iters", "4", "--rnn-iters", "4", "--nspiral", "8", "--ntest", "6", "--nval", "8"]
    + ["--batch-size", "4", "--models", "rnn", "--no-plots"],
    "mnist": ["--models", "odenet", "--iters", "4", "--channels", "2", "--no-adjoint", "--threads", "1"],
    "nfe": ["--iters", "4", "--channels", "2", "--eval-batch", "4", "--tolerances", "1e-1", "--threads", "1"],
}


@pytest.fixture
def tiny_idx(tmp_path):
    """A folder of tiny MNIST IDX files (random images) for mnist and nfe."""
    from test_mnist_loader import make_folder

    return make_folder(tmp_path, 16, 8)


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("command", sorted(INTERRUPTIBLE))
def test_ctrl_c_ends_with_one_line_saying_how_to_resume(command, tiny_idx, monkeypatch, tmp_path, capsys):
    # Ctrl-C during training ended every command with a KeyboardInterrupt traceback (exit 1 from Python).
    out = tmp_path / "run"
    argv = [command, *INTERRUPTIBLE[command], "--checkpoint-every", "1", "--no-progress", "--out", str(out)]
    if command in ("mnist", "nfe"):
        argv += ["--data-root", str(tiny_idx)]
    calls = {"n": 0}
    steps = {cls: cls.step for cls in (torch.optim.Adam, torch.optim.SGD)}  # mnist's recipe trains with SGD

    def interrupting(step):
        def interrupted_step(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:  # the third training step: two checkpoints are written by then
                raise KeyboardInterrupt
            return step(self, *args, **kwargs)

        return interrupted_step

    for cls, step in steps.items():
        monkeypatch.setattr(cls, "step", interrupting(step))
    try:
        status = exit_status(argv)
    except KeyboardInterrupt:
        pytest.fail("the interrupt left the command as a KeyboardInterrupt (a traceback)")
    assert status == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"hybrid-node {command}: interrupted" in err and f"--resume --out {out}" in err
    if command != "spirals":
        for cls, step in steps.items():
            monkeypatch.setattr(cls, "step", step)
        assert exit_status([*argv, "--resume"]) == 0  # the advice works


def test_ctrl_c_before_a_checkpoint_says_there_is_nothing_to_resume(monkeypatch, tmp_path, capsys):
    from hybrid_node.experiments import _output

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim.Adam, "step", interrupt)
    out = tmp_path / "run"
    try:
        status = exit_status(["demo", "--iters", "2", "--no-progress", "--out", str(out)])
    except KeyboardInterrupt:
        pytest.fail("the interrupt left the command as a KeyboardInterrupt (a traceback)")
    assert status == 130
    assert "nothing to resume" in capsys.readouterr().err
    assert "before its run folder was made" in _output.interrupted_message("demo", None)
