"""Command line for published runs::

    python -m slice_trl.hub ls REPO [--revision REV]
    python -m slice_trl.hub pull REPO --stage K [--out DIR] [--merge OUT] [--base-model ID] [--revision REV]

``ls`` prints the published stages, R (x100), AP/FP/forgetting and GP/IP. ``pull`` downloads
stage K's adapter (with the stages before it); ``--merge OUT`` also writes the full model at the
end of stage K (base + stages 1..K merged) as a plain transformers checkpoint.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slice_trl.hub", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list the published stages and scores of a run")
    ls.add_argument("repo", help="the Hub model repo, e.g. user/my-run")
    ls.add_argument("--revision", default=None)
    pull = sub.add_parser("pull", help="download stage K; --merge OUT writes the merged full model")
    pull.add_argument("repo")
    pull.add_argument("--stage", type=int, required=True, help="the stage to pull (1-indexed)")
    pull.add_argument("--out", default=None, help="download into this folder (default: the Hugging Face cache)")
    pull.add_argument("--merge", default=None, metavar="OUT", help="write base + stages 1..K merged to this folder")
    pull.add_argument("--base-model", default=None, help="the base model (when the run was trained on a local one)")
    pull.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    pull.add_argument("--revision", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from slice_trl.hub.load import format_listing, list_run, pull

    try:
        if args.command == "ls":
            print(format_listing(list_run(args.repo, revision=args.revision)))
        else:
            result = pull(args.repo, args.stage, revision=args.revision, out=args.out, merge=args.merge,
                          base_model=args.base_model, dtype=args.dtype)
            print(f"stage {args.stage} adapter: {result['adapter']}")
            if result["merged"] is not None:
                print(f"merged model (base + stages 1..{args.stage}): {result['merged']}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        from huggingface_hub import constants

        what = f"revision {args.revision!r} of " if isinstance(err, RevisionNotFoundError) else ""
        print(f"error: {what}{args.repo} not found on {constants.ENDPOINT} (a private repo needs a token: "
              "HF_TOKEN or `hf auth login`)", file=sys.stderr)
        return 2
    except Exception as err:  # other Hub errors (network, server): one line, no traceback
        from slice_trl.hub.redaction import describe, known_secrets

        print(f"error: {describe(err, known_secrets(None))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
