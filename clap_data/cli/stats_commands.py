"""Commands that look into datasets without changing them: ``sql`` (DuckDB over the views of
:mod:`clap_data.corpus`) and ``stats`` (the token statistics of :mod:`clap_data.stats`)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from clap_data.cli.common import app, dataset_arguments, stderr, stdout, traceback_log_dir, user_errors
from clap_data.errors import ClapDataError
from clap_data.urls import is_url

_FETCH = 10_000  # rows per fetch when printing JSON or CSV, so a large result streams
_HELP = """\
.tables          the views (frames, episodes, tasks, quarantine, datasets) and any table you made
.schema [NAME]   the columns of NAME, or of every view
.help            this text
.quit, .exit     leave (or Ctrl-D)
Statements end with ';' and may span lines; quote column names with dots: "observation.state"."""


def _history_file() -> Path:
    """Beside the logs, per user, as the XDG base directory spec places state."""
    return traceback_log_dir().parent / "sql_history"


def split_query(items: list[str]) -> tuple[list[str | Path], str | None]:
    """``DATASET... [QUERY]``: the last argument is the query when it is not a folder or a URL. One without a
    space is no query, so a mistyped dataset is reported as missing rather than run as SQL."""
    if len(items) < 2 or Path(items[-1]).is_dir() or is_url(items[-1]):
        return dataset_arguments(items), None
    query = items[-1]
    if Path(query).is_file():
        raise ClapDataError(f"{query} is a file, not a dataset folder; to run the statements it holds: "
                            f"clap-data sql DATASET... < {query}")
    if not query.split(maxsplit=1)[1:]:
        raise ClapDataError(f"{query} does not exist: give dataset folders, then optionally a query as the last "
                            "argument")
    return dataset_arguments(items[:-1]), query


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _print_table(cursor: Any, max_rows: int) -> None:
    if cursor.description is None:  # a statement without a result (CREATE, SET, …)
        return
    rows = cursor.fetchmany(max_rows + 1)
    table = Table(show_edge=False, header_style="bold")
    for name, *_ in cursor.description:
        table.add_column(escape(name), overflow="fold")
    for row in rows[:max_rows]:
        table.add_row(*(escape(_cell(v)) for v in row))
    stdout.print(table)
    shown = min(len(rows), max_rows)
    more = f"; only the first {max_rows} are shown (--max-rows, or --csv / --json for all)"
    more = more if len(rows) > max_rows else ""
    stdout.print(f"({shown} row{'' if shown == 1 else 's'}{more})", highlight=False)


def _batches(cursor: Any) -> Iterator[list[tuple]]:
    while rows := cursor.fetchmany(_FETCH):
        yield rows


def _print_json(cursor: Any) -> None:
    names = [d[0] for d in cursor.description or []]
    out, first = sys.stdout, True
    out.write("[")
    for rows in _batches(cursor) if cursor.description else []:
        for row in rows:
            out.write(("\n" if first else ",\n") + json.dumps(dict(zip(names, row, strict=True)), default=str))
            first = False
    out.write("\n]\n" if not first else "]\n")


def _print_csv(cursor: Any) -> None:
    if cursor.description is None:
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([d[0] for d in cursor.description])
    for rows in _batches(cursor):
        writer.writerows([v if isinstance(v, str) or v is None else json.dumps(v, default=str) for v in row]
                         for row in rows)


def _run(connection: Any, statement: str, output: str, max_rows: int) -> None:
    """Raises ClapDataError with DuckDB's message as one sentence when the statement fails."""
    import duckdb

    from clap_data.corpus import first_sentence

    try:
        cursor = connection.execute(statement)
        if output == "json":
            _print_json(cursor)
        elif output == "csv":
            _print_csv(cursor)
        else:
            _print_table(cursor, max_rows)
    except duckdb.Error as exc:
        raise ClapDataError(f"the query failed: {first_sentence(exc)}") from None


def _dot_command(connection: Any, line: str, max_rows: int) -> bool:
    """Run one ``.command``; False when it asks to leave."""
    from clap_data.corpus import VIEWS, sql_identifier

    word, _, rest = line.strip().partition(" ")
    if word in (".quit", ".exit"):
        return False
    if word == ".help":
        stdout.print(escape(_HELP), highlight=False)
    elif word == ".tables":
        _run(connection, "SELECT table_name AS name, lower(table_type) AS kind FROM information_schema.tables "
             "ORDER BY kind DESC, name", "table", max_rows)
    elif word == ".schema":
        for name in rest.split() or VIEWS:
            stdout.print(f"[bold]{escape(name)}[/bold]")
            _run(connection, f"DESCRIBE {sql_identifier(name)}", "table", max_rows)
    else:
        raise ClapDataError(f"{word} is not a command: .help lists them")
    return True


def _read_history() -> Any:
    """readline with the saved history (line editing, arrows, Ctrl-R), only when a person types."""
    import readline

    readline.set_history_length(1000)
    try:
        readline.read_history_file(_history_file())
    except OSError:
        pass  # no history yet
    return readline


def _save_history(readline: Any) -> None:
    try:
        _history_file().parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(_history_file())
    except OSError:
        stderr.print(f"note: the history could not be saved to {_history_file()}")


def _prompt(corpus: Any, output: str, max_rows: int) -> int:
    """Read statements until ``.quit`` or end of input; return how many failed. Piped input gets no prompts."""
    interactive = sys.stdin.isatty()
    readline = _read_history() if interactive else None
    if interactive:
        corpus.connection.execute("SET enable_progress_bar = true")  # a person waits on the terminal
        names = ", ".join(ds.name for ds in corpus.datasets)
        stderr.print(f"clap-data sql over {names}: end statements with ';', .help for help, .quit to leave",
                     highlight=False)
    failures, buffer = 0, []
    try:
        while True:
            try:
                line = input(("...> " if buffer else "sql> ") if interactive else "")
                if not buffer and line.strip().startswith("."):
                    if not _dot_command(corpus.connection, line, max_rows):
                        break
                    continue
                buffer += [line] if line.strip() else []
                if buffer and line.rstrip().endswith(";"):
                    statement, buffer = "\n".join(buffer), []
                    _run(corpus.connection, statement, output, max_rows)
            except EOFError:
                break
            except KeyboardInterrupt:  # Ctrl-C drops the statement being typed, or stops the one running
                buffer = []
                stderr.print("interrupted")
            except ClapDataError as exc:
                failures += 1
                stderr.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        if buffer and not interactive:  # a script's last statement may lack its ';'
            _run(corpus.connection, "\n".join(buffer), output, max_rows)
    finally:
        if readline is not None:
            _save_history(readline)
    return failures


@app.command("sql", no_args_is_help=True)
@user_errors
def sql(
    items: Annotated[list[str], typer.Argument(
        metavar="DATASET... [QUERY]",
        help="Datasets, then optionally a query (the last argument, when it is not a folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (a list of objects).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the result as CSV.")] = False,
    db: Annotated[Path | None, typer.Option(help="Write the views into this DuckDB database file and exit.")] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows shown in a table (JSON and CSV print all).")] = 100,
) -> None:
    """Query datasets with DuckDB SQL: views frames, episodes, tasks, quarantine, datasets. Without a query,
    an interactive prompt."""
    from clap_data.corpus import VIEWS, open_corpus

    datasets, query = split_query(items)
    output = "json" if as_json else "csv" if as_csv else "table"
    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    if db is not None and query is not None:
        raise typer.BadParameter("--db writes the views and exits: give it without a query")
    if db is not None:
        with open_corpus(datasets, purpose="sql --db", database=str(db)) as corpus:
            names = ", ".join(ds.name for ds in corpus.datasets)
        stdout.print(f"{db}: views {', '.join(VIEWS)} over {names}; open it with `duckdb {db}` (the views read "
                     "the datasets' parquet files, by absolute path, when queried)", highlight=False)
        return
    with open_corpus(datasets, purpose="sql") as corpus:
        if query is not None:
            _run(corpus.connection, query, output, max_rows)
            return
        failures = _prompt(corpus, output, max_rows)
    if failures and not sys.stdin.isatty():
        raise typer.Exit(1)


# --- stats ------------------------------------------------------------------------------------------


def _slot_label(slot: Any) -> str:
    return f"{slot.arm[0].upper()}{slot.index}"


def _top(usage: Any) -> str:
    return " ".join(f"{t['code']}:{t['share']:.0%}" for t in usage.top_codes) or "-"


def _dead(usage: Any) -> str:
    listed = f" ({', '.join(map(str, usage.dead_codes))})" if 0 < len(usage.dead_codes) <= 4 else ""
    return f"{len(usage.dead_codes)}{listed}"


def _cells(usage: Any, transitions: Any, k: int) -> list[str]:
    moves = ["-", "-"] if transitions is None else [f"{transitions.stay_share:.1%}", f"{transitions.entropy_bits:.3f}"]
    return [f"{usage.used_codes}/{k}", _dead(usage), f"{usage.entropy_bits:.3f}", f"{usage.perplexity:.2f}", *moves,
            _top(usage)]


_HEADERS = ["codes used", "dead", "entropy bits", "perplexity", "same next", "H(next|code)", "top codes"]


GROUP_WIDTH = 24  # a group's name (a task can be a sentence) folds beyond this, so the numbers keep their room


def _table(title: str, headers: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, overflow="fold", max_width=GROUP_WIDTH if i == 0 else None)
    return table


def _print_column(column: Any, by: str) -> None:
    k = column.codebook_size
    checkpoints = ", ".join(f"{sha[:12]}…" for sha in column.checkpoints)
    stdout.print(f"\n[bold]{column.column}[/bold]: {column.overall.frames:,} frames of {', '.join(column.datasets)}; "
                 f"Nq {column.num_queries} per arm, K {k}; checkpoint {checkpoints}", highlight=False)
    groups = _table(f"per {by}, the active arms' slots together", [by, "frames", "padded", *_HEADERS])
    for group in [column.overall, *column.groups]:
        groups.add_row(escape(group.group or "all"), f"{group.frames:,}", f"{group.padded_share:.1%}",
                       *_cells(group.usage, group.transitions, k))
    stdout.print(groups)
    slots = _table("per slot, all groups (L = left arm, R = right arm)", ["slot", "uses", *_HEADERS])
    for slot in column.overall.slots:
        slots.add_row(_slot_label(slot), f"{slot.usage.occurrences:,}", *_cells(slot.usage, slot.transitions, k))
    stdout.print(slots)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_divergence(divergence: Any, num_queries: int) -> None:
    table = _table(f"\nhuman {divergence.human_column} against robot {divergence.robot_column}",
                   ["slot", "Jensen–Shannon bits", "human uses of codes no robot uses", "human codes no robot uses"])
    for row in [divergence.overall, *divergence.slots]:
        label = "all" if row.slot is None else f"{row.arm[0].upper()}{row.slot % num_queries}"
        table.add_row(label, "-" if row.js_bits is None else f"{row.js_bits:.3f}",
                      _share(row.human_only_occurrence_share), _share(row.human_only_distinct_share))
    stdout.print(table)


@app.command("stats", no_args_is_help=True)
@user_errors
def stats(
    datasets: Annotated[list[str], typer.Argument(
        help="Tokenized datasets (action_tokens and/or pseudo_tokens): folders, or hf://datasets/ORG/NAME[@REV].")],
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON.")] = False,
    by: Annotated[str, typer.Option(help="Group by robot_type, task or dataset.")] = "robot_type",
    top: Annotated[int, typer.Option(min=1, help="Most used codes listed per slot and group.")] = 5,
    valid_only: Annotated[bool, typer.Option(help="Leave out padded frames (chunk past the episode end).")] = False,
) -> None:
    """Token statistics: code usage, entropy, perplexity, dead codes, chunk-to-chunk transitions, per slot and
    per group, and how far human pseudo-tokens are from robot action tokens."""
    from clap_data.corpus import open_corpus
    from clap_data.stats import BY_KEYS, token_stats

    if by not in BY_KEYS:
        raise typer.BadParameter(f"{by!r} is not one of {', '.join(BY_KEYS)}", param_hint="--by")
    with open_corpus(dataset_arguments(datasets), purpose="stats") as corpus:
        result = token_stats(corpus, by=by, top=top, valid_only=valid_only)
    if not result.columns:
        raise ClapDataError("none of the datasets has a token column: run clap-data tokenize act-vae or "
                            "pseudolabel vd-vae first")
    if as_json:
        print(json.dumps(asdict(result)))
        return
    for column in result.columns:
        _print_column(column, by)
    if result.divergence is not None:
        _print_divergence(result.divergence, result.columns[0].num_queries)
    for notice in result.notices:
        stdout.print(f"note: {escape(notice)}", highlight=False)
