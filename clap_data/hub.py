"""``clap-data publish``: put a finished dataset on the Hugging Face Hub so colleagues load it by repo id.

What is published is exactly the dataset clap-data wrote: the files its manifest lists (the manifest
included), plus the dataset card (:mod:`clap_data.dataset_card`), and nothing else — not the lock file
or the staging and column-update folders beside it, not a file added by hand. So before anything
leaves the machine the dataset must be complete and intact: its metadata of a schema this clap-data
reads, no interrupted ingest or column update beside it, and a clean quick ``verify`` (every file's
size and sha256 against the manifest, rows, episode ranges, video frame counts). The dataset's lock
is held shared for the whole upload, so no clap-data writer changes it meanwhile.

Resumable means a rerun after an interruption sends only what the Hub lacks. The remote tree (sha256
of LFS files, git blob id of the others) is compared with the manifest, and only missing or changed
files are committed: a rerun of a finished publish commits nothing. Files are committed in batches
(videos and data first, then the metadata, the card and the removal of files the dataset no longer
has, so a first publish is not loadable until it is complete), and LFS content already uploaded by
an interrupted run is not sent again (the Hub's LFS batch answer says it is there). Like lerobot's
own ``push_to_hub``, the revision is then tagged with the codebase version (``v3.0``), the tag lerobot
resolves when it loads a dataset.

Licence policy: a source whose licence forbids redistribution (Ego4D) is published only to a private
repo, and only when the user says the repo's readers are licensed (``--private --licence-ok``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile, constants
from huggingface_hub.errors import HfHubHTTPError

from clap_data.dataset_card import CardLicence, render_card, source_counts
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.lerobot_v3 import layout
from clap_data.lerobot_v3.column_update import ColumnUpdate
from clap_data.lerobot_v3.manifest import MANIFEST_PATH
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.verify import verify_dataset
from clap_data.locking import dataset_lock
from clap_data.progress import Reporter, SilentReporter
from clap_data.staging import StagingArea

CARD_PATH = "README.md"
HUB_KEEPS = frozenset({".gitattributes"})  # the Hub's own file in every repo: never removed by a publish
# Sources whose licence forbids redistribution: published only privately, to readers who hold the licence.
GATED_SOURCES = {"ego4d": "the Ego4D licence agreement (ego4d-data.org), which forbids redistribution"}
# Licences as the publishers state them (Hub licence ids); other sources need --licence for the card to say one.
SOURCE_LICENCES = {"droid": "cc-by-4.0", "agibot": "cc-by-nc-sa-4.0"}
PAYLOAD_DIRS = ("data/", "videos/")  # committed first, in batches; everything else goes in the last commit
FILES_PER_COMMIT = 100
BYTES_PER_COMMIT = 5 * 2**30


@dataclass(frozen=True)
class PublishRequest:
    dataset: Path
    repo_id: str
    private: bool = False
    revision: str = "main"
    endpoint: str | None = None  # None: HF_ENDPOINT, else the public Hub
    licence: str | None = None  # a Hub licence id for the card; default: the sources' own, when known
    licence_ok: bool = False  # the user confirms every reader of the (private) repo holds the sources' licences
    dry_run: bool = False


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative to the dataset, as on the Hub
    size: int
    sha256: str
    content: bytes | None = None  # the card, which lives only in memory


@dataclass
class PublishPlan:
    """What a publish would upload: checked, but nothing sent yet."""

    dataset: Path
    files: list[LocalFile]
    card: str
    licence: CardLicence
    sources: dict[str, int]
    notices: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class PublishReport:
    url: str
    plan: PublishPlan
    revision: str
    commit: str | None = None  # the revision's head once published
    uploaded: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    commits: int = 0
    tag: str = layout.CODEBASE_VERSION
    tag_moved: bool = False


def repo_url(endpoint: str, repo_id: str, revision: str) -> str:
    base = f"{endpoint.rstrip('/')}/datasets/{repo_id}"
    return base if revision == "main" else f"{base}/tree/{revision}"


# ── checks ────────────────────────────────────────────────────────────
def _check_leftovers(root: Path) -> None:
    """An interrupted ingest or column update beside the dataset: what is on disk is not what the
    command that was interrupted means to leave, so the user finishes it first."""
    staging = StagingArea(root)
    if staging.has_resumable_work():
        raise ClapDataError(
            f"{root} has an unfinished ingest beside it ({staging.root}); rerun that ingest to finish it, then publish"
        )
    columns = ColumnUpdate(root).staging
    if columns.exists():
        raise ClapDataError(
            f"{root} has an unfinished column update beside it ({columns}); rerun the tokenize or pseudolabel command "
            "that started it to finish it, then publish"
        )


def _licence(request: PublishRequest, sources: dict[str, int]) -> tuple[CardLicence, list[str]]:
    """The card's licence and notices; refuses gated sources unless ``--private --licence-ok``."""
    gated = sorted(s for s in sources if s in GATED_SOURCES)
    if gated and not (request.private and request.licence_ok):
        terms = "; ".join(GATED_SOURCES[s] for s in gated)
        raise ClapDataError(
            f"{request.dataset} is derived from {', '.join(gated)}, bound by {terms}: publish it only to a private "
            "repo whose readers all hold that licence, with --private --licence-ok"
        )
    if gated:
        terms = "; ".join(GATED_SOURCES[s] for s in gated)
        note = f"derived from {', '.join(gated)}, bound by {terms}; share this private repo only with licensees."
        return CardLicence(request.licence or "other", note, None if request.licence else gated[0]), []
    if request.licence:
        return CardLicence(request.licence, f"{request.licence}, as the publisher states."), []
    known = {SOURCE_LICENCES.get(s) for s in sources}
    if len(known) == 1 and None not in known:
        spdx = known.pop()
        return CardLicence(spdx, f"{spdx}, the licence its source ({', '.join(sources)}) is published under."), []
    notice = (f"no licence is known for {', '.join(sources)}: the card says 'unknown'; "
              "pass --licence with the licence the data is under")
    return CardLicence("unknown", "not stated (ask the publisher)."), [notice]


def _verify(root: Path, reporter: Reporter) -> None:
    report = verify_dataset(root, full=False, reporter=reporter)
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise ClapDataError(
            f"{root} fails verification: {report.problems[0]}{more}; nothing was uploaded. "
            f"Run `clap-data verify {root}` for every problem"
        )


def plan_publish(request: PublishRequest, reporter: Reporter) -> PublishPlan:
    """Check the dataset (see the module docstring) and list what would be uploaded; call under the lock."""
    root = Path(request.dataset).absolute()
    meta = DatasetMetadata.load(root)
    if meta.info.get("codebase_version") != layout.CODEBASE_VERSION:
        raise ClapDataError(
            f"{root} is LeRobot {meta.info.get('codebase_version')!r}, not {layout.CODEBASE_VERSION}: "
            "only datasets clap-data wrote are published"
        )
    _check_leftovers(root)
    sources = source_counts(meta)
    licence, notices = _licence(request, sources)
    reporter.phase(f"Verifying {root} before publishing it")
    _verify(root, reporter)
    manifest = meta.manifest()
    assert manifest is not None  # verify refuses a dataset without one
    files = [LocalFile(path, int(entry["size"]), str(entry["sha256"])) for path, entry in manifest.files.items()]
    files.append(LocalFile(MANIFEST_PATH, (root / MANIFEST_PATH).stat().st_size, file_sha256(root / MANIFEST_PATH)))
    card = render_card(meta, request.repo_id, licence, sources, request.private)
    data = card.encode()
    files.append(LocalFile(CARD_PATH, len(data), hashlib.sha256(data).hexdigest(), data))
    return PublishPlan(root, sorted(files, key=lambda f: f.path), card, licence, sources, notices)


# ── upload ────────────────────────────────────────────────────────────
def _git_blob_id(local: LocalFile, root: Path) -> str:
    """The id git gives the file's content (what the Hub's tree lists for a file not stored in LFS)."""
    data = local.content if local.content is not None else (root / local.path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _on_hub(local: LocalFile, remote: RepoFile, root: Path) -> bool:
    """Whether the Hub's file has the local content: the same LFS sha256, else the same git blob id."""
    if remote.size != local.size:
        return False
    return remote.lfs.sha256 == local.sha256 if remote.lfs is not None else remote.blob_id == _git_blob_id(local, root)


def _batches(files: list[LocalFile]) -> Iterator[list[LocalFile]]:
    """The payload (data, videos) in commits of bounded size, then everything else in one last commit."""
    payload = [f for f in files if f.path.startswith(PAYLOAD_DIRS)]
    batch: list[LocalFile] = []
    for local in payload:
        if batch and (len(batch) == FILES_PER_COMMIT or sum(f.size for f in batch) + local.size > BYTES_PER_COMMIT):
            yield batch
            batch = []
        batch.append(local)
    if batch:
        yield batch
    yield [f for f in files if not f.path.startswith(PAYLOAD_DIRS)]


def _addition(local: LocalFile, root: Path) -> CommitOperationAdd:
    operation = CommitOperationAdd(local.path, local.content if local.content is not None else str(root / local.path))
    # verify hashed every file a moment ago, under the lock we still hold: no need to read it again
    operation.upload_info.sha256 = bytes.fromhex(local.sha256)
    return operation


def _tag_version(api: HfApi, request: PublishRequest, commit: str) -> bool:
    """Point the codebase-version tag at ``commit`` (as lerobot's push_to_hub does); True if it moved."""
    tag = layout.CODEBASE_VERSION
    current = {ref.name: ref.target_commit for ref in api.list_repo_refs(request.repo_id, repo_type="dataset").tags}
    if current.get(tag) == commit:
        return False
    if tag in current:
        api.delete_tag(request.repo_id, tag=tag, repo_type="dataset")
    api.create_tag(request.repo_id, tag=tag, revision=commit, repo_type="dataset")
    return True


def _open_repo(api: HfApi, request: PublishRequest) -> dict[str, RepoFile]:
    """Create the repo (and branch) if needed; the files it holds at the revision."""
    api.create_repo(request.repo_id, repo_type="dataset", private=request.private, exist_ok=True)
    if request.private and not api.repo_info(request.repo_id, repo_type="dataset").private:
        raise ClapDataError(f"{request.repo_id} already exists and is public; make it private on the Hub, or publish "
                            "to another repo, to publish with --private")
    if request.revision != "main":
        api.create_branch(request.repo_id, branch=request.revision, repo_type="dataset", exist_ok=True)
    tree = api.list_repo_tree(request.repo_id, repo_type="dataset", revision=request.revision, recursive=True)
    return {entry.path: entry for entry in tree if isinstance(entry, RepoFile)}


def _commit(api: HfApi, request: PublishRequest, plan: PublishPlan, todo: list[LocalFile], report: PublishReport,
            reporter: Reporter) -> None:
    """Commit ``todo`` in batches (see :func:`_batches`), the removals with the last one."""
    commits: list[tuple[list[LocalFile], list[str]]] = [(batch, []) for batch in _batches(todo)]
    commits[-1] = (commits[-1][0], report.removed)
    commits = [(batch, removed) for batch, removed in commits if batch or removed]
    for number, (batch, removed) in enumerate(commits, 1):
        size = sum(f.size for f in batch)
        reporter.phase(f"Commit {number} of {len(commits)}: {len(batch)} files ({size / 2**20:,.1f} MiB)"
                       + (f", {len(removed)} removed" if removed else ""))
        operations = [_addition(f, plan.dataset) for f in batch] + [CommitOperationDelete(path) for path in removed]
        api.create_commit(request.repo_id, operations, repo_type="dataset", revision=request.revision,
                          commit_message=f"clap-data publish ({number}/{len(commits)})")
        report.commits += 1
        report.uploaded += [f.path for f in batch]
        report.uploaded_bytes += size


def _upload(plan: PublishPlan, request: PublishRequest, reporter: Reporter) -> PublishReport:
    api = HfApi(endpoint=request.endpoint)
    report = PublishReport(repo_url(api.endpoint, request.repo_id, request.revision), plan, request.revision)
    reporter.phase(f"Comparing with {report.url}")
    remote = _open_repo(api, request)
    todo = [f for f in plan.files if f.path not in remote or not _on_hub(f, remote[f.path], plan.dataset)]
    local_paths = {f.path for f in plan.files}
    report.removed = sorted(p for p in remote if p not in local_paths and p not in HUB_KEEPS)
    report.unchanged = len(plan.files) - len(todo)
    if todo or report.removed:
        removing = f", removing {len(report.removed)}" if report.removed else ""
        reporter.phase(f"Uploading {len(todo)} of {len(plan.files)} files{removing}")
        _commit(api, request, plan, todo, report, reporter)
    else:
        reporter.phase(f"Nothing to upload: the {len(plan.files)} files are on the Hub already")
    heads = {ref.name: ref.target_commit for ref in api.list_repo_refs(request.repo_id, repo_type="dataset").branches}
    report.commit = heads[request.revision]
    report.tag_moved = _tag_version(api, request, report.commit)
    return report


def _hub_failure(exc: BaseException | None, url: str) -> ClapDataError:
    """A failed Hub call as one sentence: the reason (and the reason behind it), and that a rerun resumes."""
    reasons = []
    while exc is not None and len(reasons) < 2:
        text = str(exc).strip()
        reasons.append(text.splitlines()[0].rstrip(".") if text else type(exc).__name__)
        exc = exc.__cause__
    return ClapDataError(f"publishing to {url} stopped ({': '.join(reasons)}); what was uploaded stays there: "
                         "rerun the same command to upload the rest")


def publish(request: PublishRequest, reporter: Reporter | None = None) -> PublishReport:
    """Check, then (unless ``dry_run``) upload what the Hub lacks and tag it; the dataset's lock is held shared
    throughout. A dry run needs no network: it reports the files and the card."""
    reporter = reporter or SilentReporter()
    url = repo_url(request.endpoint or constants.ENDPOINT, request.repo_id, request.revision)
    with dataset_lock(request.dataset, exclusive=False, purpose="publish"):
        plan = plan_publish(request, reporter)
        if request.dry_run:
            return PublishReport(url, plan, request.revision)
        try:
            return _upload(plan, request, reporter)
        except (HfHubHTTPError, httpx.HTTPError, OSError) as exc:
            raise _hub_failure(exc, url) from None
        except RuntimeError as exc:  # huggingface_hub wraps a failed LFS upload in one
            if isinstance(exc.__cause__, (HfHubHTTPError, httpx.HTTPError, OSError)):
                raise _hub_failure(exc, url) from None
            raise
