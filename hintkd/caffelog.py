"""Reads Caffe's glog training output: train and test records by iteration.

It understands the lines that BVLC Caffe's solver has printed across versions:
    Iteration 100 (3.2 iter/s, 31.2s/100 iters), loss = 0.61     (newer)
    Iteration 100, loss = 0.61                                    (older)
        Train net output #0: loss = 0.61 (* 1 = 0.61 loss)
    Iteration 100, lr = 0.1
    Iteration 1000, Testing net (#0)
        Test net output #0: accuracy = 0.91
    Snapshotting to binary proto file snapshots/net_iter_1000.caffemodel
Lines it does not know are skipped; lines it knows but cannot read become
warnings. A later record of the same iteration (a resumed run repeats the
iterations after its last snapshot) replaces the earlier one.
"""
import datetime
import gzip
import re
import zlib

# glog before 0.6 writes I1122 06:35:10.123456; glog 0.6 adds the year: I20261122.
GLOG_PREFIX = re.compile(r"^[IWEF](\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s+\d+\s+\S+\]\s?(.*)$")
ITERATION_LOSS = re.compile(r"^Iteration (\d+)(?: \(([\d.e+-]+) iter/s, ([\d.e+-]+)s/(\d+) iters?\))?, loss = (\S+)$")
LEARNING_RATE = re.compile(r"^Iteration (\d+), lr = (\S+)$")
TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)$")
OUTPUT = re.compile(r"^(Train|Test) net output #(\d+): (\S+) = (\S+)")
SNAPSHOT = re.compile(r"^Snapshotting to (?:binary proto|HDF5) file (\S+)$")
RESTORE = re.compile(r"^Restoring previous solver status from (\S+)$")


class LogParser:
    """Feed lines in order; read .train, .test, .snapshots, .warnings."""

    def __init__(self):
        self.train = {}       # iteration -> {"iteration", "seconds", "total_loss", "lr", outputs...}
        self.test = {}        # iteration -> {"iteration", "seconds", outputs...}
        self.snapshots = []   # (iteration, path)
        self.restores = []
        self.warnings = []
        self.done = False
        self._start = None
        self._last_time = None
        self._year_offset = 0
        self._train_iter = None
        self._test_iter = None
        self._line_number = 0

    def feed_text(self, text):
        for line in text.splitlines():
            self.feed(line)

    def feed(self, line):
        self._line_number += 1
        match = GLOG_PREFIX.match(line.rstrip("\n"))
        if not match:
            return
        seconds = self._seconds(match)
        message = match.group(8).strip()
        try:
            self._message(message, seconds)
        except ValueError as e:
            self.warnings.append(f"line {self._line_number}: cannot read '{message[:80]}': {e}")

    def _message(self, message, seconds):
        if m := ITERATION_LOSS.match(message):
            it = int(m.group(1))
            self._train_iter, self._test_iter = it, None
            # "loss =" of this line is the weighted sum of the outputs that follow;
            # an output may itself be named "loss" (a blob name), so the sum keeps its own name.
            self.train[it] = {"iteration": it, "seconds": seconds, "total_loss": float(m.group(5))}
        elif m := LEARNING_RATE.match(message):
            it = int(m.group(1))
            self.train.setdefault(it, {"iteration": it, "seconds": seconds})["lr"] = float(m.group(2))
        elif m := TESTING.match(message):
            it = int(m.group(1))
            self._test_iter, self._train_iter = it, None
            self.test[it] = {"iteration": it, "seconds": seconds}
        elif m := OUTPUT.match(message):
            phase, name, value = m.group(1), m.group(3), float(m.group(4))
            current = self._train_iter if phase == "Train" else self._test_iter
            if current is None:
                raise ValueError(f"{phase.lower()} output outside an iteration")
            record = (self.train if phase == "Train" else self.test)[current]
            record[name] = value
            record["seconds"] = seconds  # as Caffe's tools/extra/parse_log.py: the output's time
        elif m := SNAPSHOT.match(message):
            path = m.group(1)
            it = re.search(r"_iter_(\d+)\.", path)
            self.snapshots.append((int(it.group(1)) if it else None, path))
        elif m := RESTORE.match(message):
            self.restores.append(m.group(1))
        elif message.startswith("Optimization Done"):
            self.done = True

    def _seconds(self, match):
        year, month, day, hour, minute, second, fraction = match.groups()[:7]
        year = int(year) if year else 2001 + self._year_offset
        try:
            t = datetime.datetime(year, int(month), int(day), int(hour), int(minute),
                                  int(second), int(fraction.ljust(6, "0")[:6]))
        except ValueError:
            return None
        if self._last_time and t < self._last_time - datetime.timedelta(days=180):  # a year without a number ended
            self._year_offset += 1
            t = t.replace(year=t.year + 1)
        self._last_time = t
        if self._start is None:
            self._start = t
        return round((t - self._start).total_seconds(), 6)

    def check_completeness(self):
        """Warns about test passes that lack outputs the other passes have (a cut-off log)."""
        passes = [set(r) for r in self.test.values()]
        names = set().union(*passes) if passes else set()
        for it in sorted(self.test):
            missing = names - set(self.test[it])
            if missing:
                self.warnings.append(f"test pass at iteration {it} is incomplete (no {', '.join(sorted(missing))}); "
                                     + ("it is left out" if len(self.test[it]) <= 2 else "its other outputs are kept"))
        if self.train and not self.done:
            self.warnings.append(f"no 'Optimization Done': the log ends at iteration {max(self.train)} "
                                 "(still running, stopped, or truncated)")

    def train_records(self):
        return [self.train[i] for i in sorted(self.train)]

    def test_records(self):
        """Test records that have at least one output (a cut-off test pass has none)."""
        return [self.test[i] for i in sorted(self.test) if len(self.test[i]) > 2]


def parse_file(path):
    """Parses a log, plain or .gz; a damaged file gives what could be read and a warning.
    A path that is not a readable file raises OSError naming it (FileNotFoundError, ...):
    a missing log is not an empty one."""
    opener = gzip.open if str(path).endswith(".gz") else open
    parser = LogParser()
    f = opener(path, "rt", errors="replace")
    try:
        with f:
            for line in f:
                parser.feed(line)
    except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt .gz
        parser.warnings.append(f"{path}: stopped reading after line {parser._line_number}: {e}")
    parser.check_completeness()
    return parser


def accuracy_name(records):
    """The name Caffe printed for accuracy ("accuracy", "Accuracy", ...), or None."""
    names = {name for r in records for name in r if name not in ("iteration", "seconds")}
    exact = sorted(n for n in names if n.lower() == "accuracy")
    return (exact or sorted(n for n in names if "acc" in n.lower()) or [None])[0]


def final_and_best(test_records, metric=None):
    """The last test record with the accuracy (or `metric`), and the one with its highest value.

    The best is taken after iteration 0: the test of the untrained net says nothing of
    training (one real log scores 0.999 there, with the loss at Caffe's clamp of 87.3).
    """
    metric = metric or accuracy_name(test_records)
    scored = [r for r in test_records if metric in r]
    if not scored:
        return None, None
    trained = [r for r in scored if r["iteration"] > 0] or scored
    return scored[-1], max(trained, key=lambda r: (r[metric], r["iteration"]))
