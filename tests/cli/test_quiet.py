"""A run starts with hwm's own lines; `--verbose` shows what the libraries say as well."""

from __future__ import annotations

import logging

import pytest

from hwm.cli.quiet import CHATTY_LOGS, RANK_ZERO_LOG, pop_verbose, quiet_start


def test_verbose_is_hwms_flag_not_the_parsers() -> None:
    assert pop_verbose(["--config", "a.yaml", "--verbose"]) == (["--config", "a.yaml"], True)
    assert pop_verbose(["-v", "--data.seed", "1"]) == (["--data.seed", "1"], True)
    assert pop_verbose(["--config", "a.yaml"]) == (["--config", "a.yaml"], False)


def test_a_quiet_start_keeps_hwms_lines_and_every_warning(caplog: pytest.LogCaptureFixture) -> None:
    rank_zero = logging.getLogger(RANK_ZERO_LOG)
    filters, levels = list(rank_zero.filters), {n: logging.getLogger(n).level for n in CHATTY_LOGS}
    try:
        quiet_start()
        with caplog.at_level(logging.INFO):
            rank_zero.info("GPU available: False, used: False")
            rank_zero.info("\nhwm: prefilling the replay buffer with 160 random-action env frames")
            rank_zero.warning("a warning of Lightning's")
            logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 0")
            logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        shown = [r.getMessage().strip() for r in caplog.records]
        assert shown == [
            "hwm: prefilling the replay buffer with 160 random-action env frames",
            "a warning of Lightning's",
        ]
    finally:
        rank_zero.filters[:] = filters
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
