"""`hybrid-node doctor` refuses a --timeout that cannot time a Julia start, before checking anything."""

from __future__ import annotations

import pytest

from hybrid_node import cli
from hybrid_node.commands import doctor


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_bad_timeout_is_a_one_line_usage_error(value, monkeypatch, capsys):
    # Was accepted: with Julia found, --start --timeout -5 (or 0) reported a working Julia as
    # "NOT AVAILABLE (loading HybridNODE took over -5 s)" at once, and nan was a ValueError traceback.
    started = []
    monkeypatch.setattr(doctor, "julia_report", lambda *a, **k: started.append(1) or (True, []))
    with pytest.raises(SystemExit) as stop:
        cli.main(["doctor", "--start", "--timeout", value])
    assert stop.value.code == 2 and not started
    err = capsys.readouterr().err
    assert "Traceback" not in err and "argument --timeout" in err and "seconds" in err


def test_good_timeout_reaches_the_julia_check(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(doctor, "julia_report", lambda start, timeout: seen.update(timeout=timeout) or (True, []))
    assert cli.main(["doctor", "--start", "--timeout", "2.5"]) == 0
    assert seen == {"timeout": 2.5}
