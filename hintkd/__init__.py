"""hintkd: the logic the top-level scripts share (data, nets, stages, Caffe runs, reports)."""
import json


def read_table(path):
    """A data table of the paper's decisions (JSON), without its `_about` note."""
    table = json.loads(path.read_text())
    table.pop("_about", None)
    return table
