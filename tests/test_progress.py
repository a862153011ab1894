import logging

from lowbit.progress import Progress


def test_progress_logs_only_after_the_delay(caplog):
    with caplog.at_level(logging.INFO, logger="lowbit"):
        quiet = Progress("quantize_", 3, after_s=3600)
        for i in range(3):
            quiet.step(f"l{i}")
        assert not caplog.records
        loud = Progress("quantize_", 4, after_s=0, every_s=0)
        loud.step("layers.0")
        loud.step("layers.1")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "lowbit: quantize_ 1/4 layers", "lowbit: quantize_ 2/4 layers",
    ]
    assert "last: layers.1" in caplog.records[-1].getMessage()
