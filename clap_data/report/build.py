"""``clap-data report``: read the datasets, draw the figures, lay out the page and write it atomically.

The datasets are held under their shared lock while they are read, so no tokenize or ingest changes them
half-way; the page appears at ``out`` complete or not at all (written beside it, then renamed). What cannot
be shown (no ``--act-vae``, no human dataset to compare, a checkpoint whose codebook no column uses) is
said on the page and in the summary rather than silently missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clap_data import __version__
from clap_data.actions import HUMAN
from clap_data.atomic import write_bytes_atomic
from clap_data.corpus import Corpus, open_corpus
from clap_data.errors import ClapDataError
from clap_data.report import figures
from clap_data.report.html import Block, Heading, Image, Note, Paragraph, Section, Table, count_images, render_page
from clap_data.report.queries import QUARANTINE_ROWS_SHOWN, DatasetFacts, dataset_facts
from clap_data.schemas import ACTION_TOKENS, ARM_MASK_NAMES, PSEUDO_TOKENS

TASK_ROWS_SHOWN = 50


@dataclass(frozen=True)
class ReportResult:
    path: Path
    size_bytes: int
    figures: int
    datasets: int
    notes: list[str] = field(default_factory=list)  # what the page says it left out


def _is_human(facts: DatasetFacts) -> bool:
    return facts.metadata.robot_type == HUMAN


def _overview(datasets: list[DatasetFacts]) -> Section:
    rows = [
        (f.metadata.root.name, f.metadata.robot_type, f.metadata.fps, len(f.episode_lengths), f.frames, len(f.tasks),
         ", ".join(f.usage) or "none", f.quarantine.total, str(f.metadata.root))
        for f in datasets
    ]
    header = ("dataset", "robot_type", "fps", "episodes", "frames", "tasks", "token columns", "quarantined", "path")
    return Section("overview", "Overview", [Table("overview", header, rows)])


def _episodes_blocks(i: int, facts: DatasetFacts) -> list[Block]:
    lengths = facts.episode_lengths
    if len(lengths) == 0:
        return [Heading("Episodes"), Note("The dataset has no episodes.")]
    row = (len(lengths), int(lengths.sum()), int(lengths.min()), float(np.median(lengths)), int(lengths.max()))
    return [
        Heading("Episodes"),
        Image(figures.episode_lengths(lengths, facts.metadata.fps),
              f"histogram of episode lengths of {facts.metadata.root.name}"),
        Table(f"d{i}-lengths", ("episodes", "frames", "shortest", "median", "longest"), [row],
              "episode lengths in frames (meta/episodes)"),
    ]


def _task_blocks(i: int, facts: DatasetFacts) -> list[Block]:
    blocks: list[Block] = [Heading("Tasks")]
    if not facts.tasks:
        return [*blocks, Note("meta/tasks.parquet lists no task.")]
    blocks.append(Image(figures.task_counts([t.task for t in facts.tasks], [t.episodes for t in facts.tasks]),
                        f"episodes per task of {facts.metadata.root.name}"))
    rows = [(t.task_index, t.task, t.episodes, t.frames) for t in facts.tasks[:TASK_ROWS_SHOWN]]
    blocks.append(Table(f"d{i}-tasks", ("task_index", "task", "episodes", "frames"), rows,
                        "episodes and frames per task (the frames' task_index)"))
    if len(facts.tasks) > TASK_ROWS_SHOWN:
        blocks.append(Note(f"{TASK_ROWS_SHOWN} of {len(facts.tasks):,} tasks shown (those with the most frames)."))
    return blocks


def _usage_blocks(i: int, facts: DatasetFacts) -> list[Block]:
    if not facts.usage:
        return [Heading("Tokens"),
                Note("No token columns: clap-data tokenize act-vae and pseudolabel vd-vae add them.")]
    blocks: list[Block] = []
    for column, usage in facts.usage.items():
        identity = facts.metadata.token_identity(column) or {}
        blocks.append(Heading(column))
        checkpoint = str(identity.get("checkpoint_sha256", ""))[:16]
        blocks.append(Paragraph(
            f"{identity.get('tokenizer', 'tokenizer')} checkpoint {checkpoint}…, Nq {usage.num_queries} per arm, "
            f"K {usage.codebook_size}, codebook of Act-VAE {usage.codebook_sha256[:16]}…; "
            "every frame counts (padded chunks too), a slot only where its arm is active."
        ))
        blocks.append(Image(figures.slot_usage(usage.counts, usage.num_queries, column),
                            f"{column} code usage per slot of {facts.metadata.root.name}"))
        rows = []
        for slot, counts in enumerate(usage.counts):
            arm, within = divmod(slot, usage.num_queries)
            total = int(counts.sum())
            top = int(np.argmax(counts))
            share = float(counts[top] / total) if total else 0.0
            rows.append((slot, f"{ARM_MASK_NAMES[arm]} {within}", total, int((counts > 0).sum()),
                         top if total else "—", share))
        header = ("slot", "arm slot", "frames", "codes used", "top code", "top share")
        caption = f"{column}: per slot, over the frames whose arm is active"
        blocks.append(Table(f"d{i}-{column}-slots", header, rows, caption))
    return blocks


def _quarantine_blocks(i: int, facts: DatasetFacts) -> list[Block]:
    q = facts.quarantine
    blocks: list[Block] = [Heading("Quarantine")]
    if q.total == 0:
        return [*blocks, Paragraph("No episode was quarantined.")]
    blocks.append(Table(f"d{i}-quarantine-categories", ("category", "episodes"), q.by_category))
    blocks.append(Table(f"d{i}-quarantine", ("source episode", "category", "file", "reason"), q.rows,
                        "quarantine.parquet"))
    if q.total > len(q.rows):
        blocks.append(Note(f"The first {QUARANTINE_ROWS_SHOWN} of {q.total:,} quarantined episodes are listed; "
                           "quarantine.parquet holds them all."))
    return blocks


def _dataset_section(i: int, facts: DatasetFacts) -> Section:
    blocks = [Paragraph(f"{facts.metadata.root} — robot_type {facts.metadata.robot_type}, {facts.metadata.fps} fps")]
    for part in (_episodes_blocks, _task_blocks, _usage_blocks, _quarantine_blocks):
        blocks += part(i, facts)
    return Section(f"d{i}", f"{facts.metadata.root.name} ({facts.metadata.robot_type})", blocks)


def _pooled_by_codebook(datasets: list[DatasetFacts], human: bool, column: str) -> dict[str, np.ndarray]:
    pooled: dict[str, np.ndarray] = {}
    for facts in datasets:
        usage = facts.usage.get(column)
        if usage is not None and _is_human(facts) == human:
            pooled[usage.codebook_sha256] = pooled.get(usage.codebook_sha256, 0) + usage.pooled()
    return pooled


def _human_vs_robot(datasets: list[DatasetFacts]) -> Section:
    section = Section("human-vs-robot", "Human vs robot code usage")
    human = _pooled_by_codebook(datasets, True, PSEUDO_TOKENS)
    robot = _pooled_by_codebook(datasets, False, ACTION_TOKENS)
    shared = [sha for sha in human if sha in robot]
    if not shared:
        missing = "no human dataset with pseudo_tokens" if not human else "no robot dataset with action_tokens"
        if human and robot:
            missing = "the human pseudo_tokens and the robot action_tokens index different codebooks"
        section.blocks.append(Note(f"Not shown: {missing}."))
        return section
    rows = []
    for sha in shared:
        h, r = human[sha], robot[sha]
        section.blocks.append(Image(figures.human_vs_robot(h, r),
                                    f"code shares of human and robot tokens, codebook {sha[:16]}"))
        overlap = float(np.minimum(h / max(h.sum(), 1), r / max(r.sum(), 1)).sum())
        rows.append((sha[:16] + "…", int(h.sum()), int(r.sum()), int((h > 0).sum()), int((r > 0).sum()),
                     int(((h > 0) & (r > 0)).sum()), overlap))
    header = ("codebook", "human tokens", "robot tokens", "codes used by human", "codes used by robot", "used by both",
              "overlap")
    section.blocks.append(Table("human-vs-robot", header, rows,
                                "pseudo_tokens of human datasets against action_tokens of robot datasets, active slots "
                                "pooled; overlap = Σ min(human share, robot share)"))
    return section


def _act_vae_section(corpus: Corpus, datasets: list[DatasetFacts], act_vae: Path | None, samples: int,
                     progress: Callable[[str], None]) -> Section:
    from clap_data.act_vae.checkpoint import load_act_vae  # torch only when a checkpoint is given
    from clap_data.report.act_vae_views import codebook_projection, decodable, decoded_chunks

    section = Section("act-vae", "Act-VAE codebook and decoded chunks")
    if act_vae is None:
        section.blocks.append(Note("No --act-vae checkpoint given: the codebook map and the decoded chunks are "
                                   "omitted (clap-data report DATASET … --act-vae CKPT draws them)."))
        return section
    progress(f"loading the Act-VAE {act_vae}")
    model, sha = load_act_vae(act_vae)
    c = model.config
    section.blocks.append(Paragraph(
        f"{act_vae}: sha256 {sha[:16]}…, Nq {c.num_queries} per arm, K {c.codebook_size}, code dim {c.code_dim}."
    ))
    usage = {True: np.zeros(c.codebook_size, dtype=np.int64), False: np.zeros(c.codebook_size, dtype=np.int64)}
    for facts in datasets:
        for u in facts.usage.values():
            if u.codebook_sha256 == sha:
                usage[_is_human(facts)] += u.pooled()
    if not (usage[True].sum() + usage[False].sum()):
        section.blocks.append(Note("No token column of these datasets indexes this checkpoint's codebook: "
                                   "every code is drawn unused."))
    points, explained = codebook_projection(model.quantizer.codebook.detach().cpu().numpy())
    section.blocks.append(Image(figures.codebook_map(points, explained, usage[False], usage[True]),
                                "Act-VAE codebook projected on two principal components, sized by usage"))
    section.blocks.append(Table("codebook", ("codes", "used by robot", "used by human", "unused"), [(
        c.codebook_size, int((usage[False] > 0).sum()), int((usage[True] > 0).sum()),
        int(((usage[False] + usage[True]) == 0).sum()),
    )], "codes of the codebook and who uses them (every token column indexing it)"))
    section.blocks.append(Heading("Decoded chunks against ground truth"))
    if samples == 0:
        section.blocks.append(Note("--samples 0: no chunk decoded."))
        return section
    if not any(decodable(f, sha) for f in datasets):
        section.blocks.append(Note("No robot dataset has action_tokens of this checkpoint: no chunk to decode."))
        return section
    progress(f"decoding {samples} sampled chunks")
    chunks = decoded_chunks(corpus.connection, datasets, model, sha, samples)
    titles = [f"{ch.dataset} ep {ch.episode} t {ch.frame}" for ch in chunks]
    section.blocks.append(Image(
        figures.decoded_chunks([ch.truth for ch in chunks], [ch.decoded for ch in chunks], titles,
                               [ch.plotted_dofs() for ch in chunks]),
        "sampled chunks decoded from their tokens against the recorded actions",
        "absolute actions over the 32 steps of each chunk: recorded (solid) and decoded from the stored tokens "
        "(dashed), for the active arm that moves most",
    ))
    rows = [(ch.dataset, ch.episode, ch.frame, column, *ch.errors(column)) for ch in chunks for column in ch.decoded]
    header = ("dataset", "episode", "frame", "tokens", "position RMSE (m)", "rotation RMSE (rad)", "gripper RMSE")
    section.blocks.append(Table("decoded", header, rows, "active arms, all 32 steps"))
    return section


def build_report(
    roots: list[Path], out: Path, act_vae: Path | None = None, samples: int = 4,
    progress: Callable[[str], None] = lambda text: None,
) -> ReportResult:
    """Write the HTML report of ``roots`` to ``out``; see the module docstring."""
    if not roots:
        raise ClapDataError("name at least one dataset to report on")
    out = Path(out)
    if out.is_dir():
        raise ClapDataError(f"{out} is a folder; --out names the HTML file to write, e.g. {out / 'report.html'}")
    if samples < 0:
        raise ClapDataError(f"--samples must be 0 or more, got {samples}")
    with open_corpus([Path(root) for root in roots], purpose="report") as corpus:  # holds every shared lock
        datasets = []
        for dataset in corpus.datasets:
            progress(f"reading {dataset.meta.root}")
            datasets.append(dataset_facts(corpus, dataset))
        progress("drawing the figures")
        sections = [_overview(datasets), *(_dataset_section(i, f) for i, f in enumerate(datasets)),
                    _human_vs_robot(datasets), _act_vae_section(corpus, datasets, act_vae, samples, progress)]
    notes = [b.text for s in sections for b in s.blocks if isinstance(b, Note)]
    subtitle = [
        f"{len(datasets)} dataset(s): {', '.join(f.metadata.root.name for f in datasets)}",
        f"written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by clap-data {__version__}",
    ]
    page = render_page("clap-data report", subtitle, sections).encode("utf-8")
    write_bytes_atomic(out, page)
    return ReportResult(out, len(page), count_images(sections), len(datasets), notes)
