"""Share a trained model safely: ``recbole-align export`` writes a checkpoint's weights as safetensors and
its configuration as JSON (plain values only), which ``recommend`` and ``--pretrained_checkpoint`` load
without unpickling anything.

    recbole-align export --checkpoint=saved/HSTU-....pth --output=shared/hstu-ml-100k
    recbole-align recommend --checkpoint=shared/hstu-ml-100k --dataset=ml-100k --user_id=196 --topk=10

A ``.pth`` checkpoint (RecBole's format, which this project's own runs write) is a pickle: loading one from
elsewhere can run code. An exported folder holds ``model.safetensors`` and ``config.json`` only.
"""

import argparse
from pathlib import Path

from safetensors.torch import save_file

from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.errors import AlignError
from recbole_align.pretrained import CONFIG, WEIGHTS, plain_config, read_pretrained
from recbole_align.safe_write import write_json, written_atomically


def export(checkpoint, output):
    """Write ``checkpoint``'s (a dict as a recbole-align run saves it) weights and plain configuration to
    the folder ``output``."""
    config = checkpoint["config"]
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    with written_atomically(folder / WEIGHTS) as weights:
        save_file({name: tensor.contiguous() for name, tensor in checkpoint["state_dict"].items()}, weights)
    write_json(folder / CONFIG, {"model": config["model"], "dataset": config["dataset"], "config": plain_config(config)})
    return folder


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, help="a .pth checkpoint written by a recbole-align run")
    parser.add_argument("--output", required=True, help="the folder to write model.safetensors and config.json to")
    args, overrides = parse_command_line(parser, argv)
    if overrides:
        raise AlignError(f"export takes no config options; unknown options {sorted(overrides)}.")
    folder = export(read_pretrained(args.checkpoint, "checkpoint"), args.output)
    print(f"wrote {folder / WEIGHTS} and {folder / CONFIG}")


if __name__ == "__main__":
    main()
