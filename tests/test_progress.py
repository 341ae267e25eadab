"""Progress of long steps: plain lines in a log, a bar redrawn in place on a terminal."""
import io

from kdpipe.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_with_counts_and_rate():
    log = io.StringIO()
    with Progress("decode", 5, "files", interval=0.0, stream=log) as progress:
        for _ in range(5):
            progress.advance()
    lines = log.getvalue().splitlines()
    assert len(lines) == 6 and "\r" not in log.getvalue()  # one per item (interval 0), one final
    assert lines[0].startswith("decode: 1/5 files (20%), ") and "files/s" in lines[0]
    assert "s left" in lines[0] and "s left" not in lines[-1]
    assert lines[-1].startswith("decode: 5/5 files (100%), ")


def test_a_terminal_gets_one_bar_redrawn_in_place():
    terminal = Terminal()
    with Progress("decode", 4, "files", stream=terminal) as progress:
        for _ in range(4):
            progress.advance()
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.startswith("\r[")
    assert text.rstrip("\n").rsplit("\r", 1)[1].startswith("[" + "#" * 24 + "] decode: 4/4")


def test_a_quick_step_in_a_log_prints_only_the_final_line():
    log = io.StringIO()
    with Progress("decode", 3, "files", stream=log) as progress:
        progress.advance(3)
    assert log.getvalue().count("\n") == 1


def test_slow_rates_keep_two_significant_digits():
    log = io.StringIO()
    progress = Progress("figures", 12, "setups", stream=log)
    progress.start -= 40  # one setup in 40 s
    progress.advance()
    progress._write(progress.start + 40, final=False)
    assert "figures: 1/12 setups (8%), 0.025 setups/s, 40 s, 440 s left" in log.getvalue()
