"""The user's own files checked before data preparation, a download or any write.

run_stages.sh calls this once Caffe is installed (its caffe_pb2 and pycaffe read the
files) and before data_prep: the run is planned without writing, so every prototxt,
caffemodel, solver, --hints point and logits name is read and checked against the
others (blobs exist, given weights fit, the solver parses and keeps its steps apart
under --scale), on what the data will be: the dataset table's classes and image size,
or for an image folder one image of each class of --source.
"""
import sys
from pathlib import Path

from hintkd import datasets, options, plan


def expected_manifest(args):
    """What planning needs of the data before it is prepared, or None (the table's, or prepared already)."""
    info = datasets.dataset_info(args.dataset)
    if info.get("image_size") or (Path(args.data) / "manifest.json").exists():
        return None
    sample = datasets.load(args.dataset, args.source, per_class=1)
    _, channels, height, _ = sample.train_images.shape
    return {"num_classes": len(sample.classes), "channels": channels, "image_size": height}


def main(argv=None):
    parser = options.run_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    args.data = str(Path(args.out).resolve() / "data" / args.dataset)
    try:
        planner = plan.planned(plan.options_from_args(args), write=False, manifest=expected_manifest(args))
    except (plan.PlanError, datasets.DataError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if args.solver:
        solver = planner.user_solver
        options.check_scale(parser, args, solver["unscaled_stepvalue"], solver["unscaled_max_iter"],
                            f"--solver {args.solver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
