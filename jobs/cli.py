"""The ``tubeflow`` command line.

Each command lives in its own module ``jobs/<name>.py`` with two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are imported
only when their command runs, so ``tubeflow --help`` does not pay for importing Ray/torch.
Errors tubeflow raises on purpose (:class:`operators.errors.TubeflowError`) are printed as
one clear line, not a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name → (module, one-line help), in the order of `tubeflow --help`. Add a command by adding
# a module and a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "label": ("jobs.label", "label a video corpus (panoptic segments + track ids) on Ray Data, committed per video"),
    "nightly": ("jobs.nightly", "label only new or changed videos, then re-aggregate metrics over the whole output"),
    "evaluate": ("jobs.evaluate", "VPQ, PQ and STQ of predictions against a Cityscapes-VPS style GT, on Ray"),
    "convert": ("jobs.convert", "convert GT or predictions between the Cityscapes-VPS layout and a segments table"),
    "track": ("jobs.track", "give per-frame panoptic predictions identities that hold through each video"),
    "synth": ("jobs.synth", "write a deterministic synthetic driving-video corpus with GT"),
    "train": ("jobs.train", "train the built-in panoptic model with Ray Train, or (--tracker) the learned tracker"),
    "demo": ("jobs.demo", "run the main job end to end on a synthetic corpus"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tubeflow", description="Video panoptic segmentation on Ray: "
                                     "label and evaluate large video corpora.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / usage errors and exits
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"tubeflow {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])

    from operators.errors import TubeflowError

    try:
        return int(module.run(args) or 0)
    except TubeflowError as exc:  # one line; the exit code says which kind (operators/errors.py)
        print(f"tubeflow {name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"tubeflow {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
