"""What every command-line tool shares (the commands themselves: ``recbole_align.__main__``).

Every tool parses its options with :func:`parse_command_line`: its own options, then any other
``--key=value`` as a config override typed as RecBole types its command line, which reaches RecBole
as ``config_dict`` (``sys.argv`` is emptied, since RecBole's ``Config`` reads it at top priority and
would override what a tool sets per run). :func:`exit_on_error` turns bad input into one line
``recbole-align: error: ...`` and exit status 2, and Ctrl-C into one line (how to resume) and exit status 130.
"""

import functools
import sys

from recbole_align.config import command_line_overrides
from recbole_align.errors import AlignError, Interrupted


def parse_command_line(parser, argv=None):
    """(options, config overrides) of ``argv`` (default ``sys.argv[1:]``), which ``options.command_line``
    keeps for reports; ``options.config_file_list`` is ``--config_files`` split on spaces."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options, rest = parser.parse_known_args(argv)
    sys.argv = sys.argv[:1]
    options.command_line, options.override_args = argv, rest  # as given, e.g. for a report or a child process
    files = getattr(options, "config_files", None)
    options.config_file_list = files.split() if files else []
    return options, command_line_overrides(rest)


def exit_on_error(main):
    """``main(argv)`` that reports an AlignError as one line on stderr and exits with status 2."""

    @functools.wraps(main)
    def checked(argv=None):
        try:
            return main(argv)
        except AlignError as error:
            print(f"recbole-align: error: {error}", file=sys.stderr)
            sys.exit(2)
        except Interrupted as stop:
            print(f"recbole-align: interrupted: {stop}", file=sys.stderr)
            sys.exit(130)
        except KeyboardInterrupt:  # outside training (e.g. while the data loads): nothing to keep
            print("recbole-align: interrupted", file=sys.stderr)
            sys.exit(130)

    return checked

