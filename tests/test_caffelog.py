"""The Caffe log reader on real logs written elsewhere and on our own."""
import pytest

from conftest import CAFFE_LOGS as LOGS
from hintkd import caffelog


@pytest.mark.parametrize("name,final,best,best_iteration", [
    ("resnet-20__2016-08-14_00-25-56.log.gz", 0.917031, 0.918594, 60000),
    ("resnet-20__2018-10-19_01-43-18.log.gz", 0.914, 0.9142, 59000),
    ("resnet-32__2018-10-19_01-44-03.log.gz", 0.9248, 0.9255, 62000),
])
def test_real_external_logs(name, final, best, best_iteration):
    parsed = caffelog.parse_file(LOGS / name)
    tests = parsed.test_records()
    assert len(tests) == 65 and tests[0]["iteration"] == 0 and tests[-1]["iteration"] == 64000
    last, top = caffelog.final_and_best(tests)
    assert (last["Accuracy"], top["Accuracy"], top["iteration"]) == (final, best, best_iteration)
    assert parsed.done and parsed.snapshots[-1][0] == 64000
    assert parsed.train[100]["lr"] == 0.1 and parsed.train[40000]["lr"] == pytest.approx(0.01)
    assert not parsed.warnings


def test_year_rollover_and_a_resumed_iteration():
    parsed = caffelog.LogParser()
    parsed.feed_text("""I1231 23:59:59.500000 1 solver.cpp:218] Iteration 100 (3 iter/s, 33s/100 iters), loss = 0.5
I1231 23:59:59.600000 1 solver.cpp:237]     Train net output #0: loss = 0.5 (* 1 = 0.5 loss)
I0101 00:00:00.500000 1 solver.cpp:346] Iteration 200, Testing net (#0)
I0101 00:00:00.600000 1 solver.cpp:413]     Test net output #0: accuracy = 0.25
I0101 00:00:01.500000 1 solver.cpp:346] Iteration 200, Testing net (#0)
I0101 00:00:01.600000 1 solver.cpp:413]     Test net output #0: accuracy = 0.5
""")
    assert parsed.train[100]["total_loss"] == parsed.train[100]["loss"] == 0.5 and parsed.train[100]["seconds"] == pytest.approx(0.1)
    assert parsed.test[200]["accuracy"] == 0.5  # the later pass of the same iteration wins
    assert parsed.test[200]["seconds"] == pytest.approx(2.1)  # across the new year


def test_glog_with_a_four_digit_year():
    parsed = caffelog.LogParser()
    parsed.feed_text("""I20261122 07:19:57.905817  7128 solver.cpp:320] Iteration 360, loss = 0.0416398
I20261122 07:19:57.905927  7128 solver.cpp:346] Iteration 360, Testing net (#0)
I20261122 07:20:36.988454  7128 solver.cpp:413]     Test net output #0: accuracy = 0.9758
""")
    assert parsed.train[360]["total_loss"] == 0.0416398
    assert parsed.test[360] == {"iteration": 360, "seconds": pytest.approx(39.082637), "accuracy": 0.9758}


@pytest.mark.parametrize("name", ["no-such.log", "no-such.log.gz", "a-folder"])
def test_a_log_that_is_not_there_is_an_error_naming_it(tmp_path, name):
    """A missing log (or a folder given for one) is an error with its path, never an empty log."""
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OSError, match=str(tmp_path / name)):
        caffelog.parse_file(tmp_path / name)
