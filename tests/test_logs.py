"""What a run prints: progress on stderr through logging, results on stdout, and no alarm where a fresh task head
is the intent (merging/logs.py)."""
import logging

import pytest

from discriminative.domain import load_classifier
from merging.benchmark.domain import TaskSpec
from merging.logs import PACKAGES, configure


@pytest.fixture
def restored_loggers():
    """configure() binds a handler to this test's captured stderr: put the loggers back as they were after it."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in PACKAGES}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_a_base_encoder_given_a_task_head_loads_without_a_load_report(bert_pool, capfd):
    from transformers.utils import logging as hf_logging

    model = load_classifier(bert_pool["base"], TaskSpec("t", "classification", 3, "accuracy", ("a", "b", "c")))
    assert model.classifier.out_features == 3
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err and "Loading weights" not in err
    assert hf_logging.get_verbosity() == hf_logging.WARNING  # transformers' own setting is restored


def test_configure_sends_the_toolkits_info_lines_to_stderr_only(capsys, restored_loggers):
    configure()
    logging.getLogger("merging.benchmark.experiment").info("grid point 1")
    logging.getLogger("transformers.x").info("another library's line")
    out, err = capsys.readouterr()
    assert out == "" and err == "grid point 1\n"
    configure(quiet=True)
    logging.getLogger("vision.data").info("progress")
    assert capsys.readouterr().err == ""


def test_off_a_terminal_a_progress_bar_writes_whole_lines_not_carriage_returns(capsys):
    from merging.logs import progress_bar

    for _ in progress_bar(range(1000), desc="fine-tune toy (seed 0)"):
        pass
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and 1 <= len(lines) <= 3  # a 30 s interval: the first and the final state
    assert all(line.startswith("fine-tune toy (seed 0)") for line in lines) and "1000/1000" in lines[-1]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs a pseudo-terminal (POSIX)")
def test_on_a_terminal_a_progress_bar_redraws_in_place():
    """A child whose stderr is a pseudo-terminal 100 columns wide draws one live bar: carriage-return redraws,
    no 30 s throttle (the pip download bar of merging/io/pypi.py is this bar)."""
    import fcntl
    import os
    import pty
    import struct
    import sys
    import termios

    child = ("import time\nfrom merging.logs import progress_bar\n"
             "for _ in progress_bar(range(5), desc='[pypi] toy'):\n    time.sleep(0.15)\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.execv(sys.executable, [sys.executable, "-c", child])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert os.waitpid(pid, 0)[1] == 0
    redraws = [part for part in b"".join(chunks).decode().split("\r") if part.startswith("[pypi] toy")]
    assert len(redraws) >= 3 and "5/5" in redraws[-1]  # drawn again in place as it advances, not once per 30 s


def test_benchmark_command_lines_load_models_without_a_bar_each(bert_pool, capfd):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from merging.logs import quiet_model_loads

    try:
        quiet_model_loads()
        AutoModel.from_pretrained(bert_pool["ft1"])
        assert "Loading weights" not in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
