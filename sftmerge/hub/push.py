"""`sftmerge push` and `sftmerge recipe pull`: share merged models and their recipes on the Hub.

Every Hub failure (offline mode, no token, refused or unreachable endpoint) becomes one
`error:` line. huggingface_hub's shared HTTP client has no timeout by default, so a
silent endpoint would hang the command; it gets connect/read timeouts here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

import click

from sftmerge.errors import SftmergeError
from sftmerge.hub.upload_files import WEIGHT_PATTERNS, opened_for_upload, upload_plan

# Seconds to wait for the Hub to accept a connection or to answer a request.
TIMEOUT_ENV = "SFTMERGE_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 60.0


def check_finished_merge(folder: Path) -> None:
    """Refuse what is not a complete merge with its card: weights, config, recipe, sftmerge card."""
    import json

    from huggingface_hub import ModelCard

    from sftmerge.hub.card import CARD_NAME, CARD_TAGS, RECIPE_NAME

    if not folder.is_dir():
        raise SftmergeError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise SftmergeError(f"{folder} has no config.json: not a finished merge")
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        raise SftmergeError(f"{folder} has no weights (*.safetensors): not a finished merge")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, AttributeError):
            raise SftmergeError(f"{index} is not a valid safetensors index") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise SftmergeError(f"{folder} lacks weight shard {missing[0]} named in {index.name}")
    if not (folder / RECIPE_NAME).is_file():
        raise SftmergeError(f"{folder} has no {RECIPE_NAME}: not a finished merge")
    card = folder / CARD_NAME
    if not card.is_file():
        raise SftmergeError(f"{folder} has no model card {CARD_NAME} (write it with `sftmerge card {folder}`)")
    try:
        parsed = ModelCard.load(card)
    except ValueError as e:
        raise SftmergeError(f"{card} has invalid front matter: {e}") from None
    if CARD_TAGS[-1] not in (parsed.data.tags or []):
        raise SftmergeError(f"{card} is not an sftmerge model card (write it with `sftmerge card {folder}`)")
    if (folder / RECIPE_NAME).read_text(encoding="utf-8").rstrip("\n") not in parsed.text:
        raise SftmergeError(f"{card} shows another recipe than {RECIPE_NAME} (rewrite it with `sftmerge card {folder}`)")


def human_size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def hub_timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise SftmergeError(f"{TIMEOUT_ENV} must be a positive number of seconds; got {raw!r}")
    return value


@contextlib.contextmanager
def hub_session() -> Iterator[None]:
    """Bound every request by the timeout and turn Hub failures into one SftmergeError line."""
    import httpx2
    from huggingface_hub import constants, get_session
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    timeout = hub_timeout()
    get_session().timeout = httpx2.Timeout(timeout)
    where = constants.ENDPOINT
    try:
        yield
    except OfflineModeIsEnabled:
        raise SftmergeError("cannot reach the Hub: offline mode is on (HF_HUB_OFFLINE=1)") from None
    except httpx2.TimeoutException:
        raise SftmergeError(f"the Hub at {where} did not answer within {timeout:g}s ({TIMEOUT_ENV})") from None
    except httpx2.TransportError as e:
        raise SftmergeError(f"cannot reach the Hub at {where}: {e}") from None
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else f"cannot reach {where}"
        raise SftmergeError(f"cannot fetch from the Hub: {why}, and no copy is in the local cache") from None
    except RepositoryNotFoundError as e:
        raise SftmergeError(f"repository not found on the Hub, or no access to it: {_first_line(e)}") from None
    except EntryNotFoundError as e:
        raise SftmergeError(f"file not found on the Hub: {_first_line(e)}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        hint = " (check HF_TOKEN or `hf auth login`)" if status in (401, 403) else ""
        raise SftmergeError(f"the Hub refused the request ({status}){hint}: {_first_line(e)}") from None
    except ValueError as e:
        if not str(e).startswith("Invalid metadata in README.md"):
            raise
        raise SftmergeError(f"the Hub rejected the model card: {' '.join(str(e).split())}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _require_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise SftmergeError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def _valid_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise SftmergeError(f"invalid repository id {repo_id!r}: {_first_line(e)}") from None
    return repo_id


@click.command("push")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("repo_id")
@click.option("--public", is_flag=True, help="Create the repository public (default: private).")
@click.option("--private", is_flag=True, hidden=True, help="The default; accepted for older scripts.")
@click.option("--dry-run", is_flag=True, help="List what would be uploaded and what is left out, and print the card.")
def push_command(out: str, repo_id: str, public: bool, private: bool, dry_run: bool) -> None:
    """Upload the merged model folder OUT to the Hub model repository REPO_ID.

    Only the model's files are uploaded (weights and index, config, generation config,
    tokenizer files, card, recipe, merge report, results/*.json); symbolic links never.
    A new repository is private unless --public; an existing one keeps its visibility.
    The token comes from HF_TOKEN or the one saved by `hf auth login`.
    """
    from huggingface_hub import constants

    from sftmerge.hub.card import CARD_NAME

    if public and private:
        raise SftmergeError("--public and --private contradict each other")
    folder = Path(out)
    _valid_repo_id(repo_id)
    check_finished_merge(folder)
    plan, left_out = upload_plan(folder)
    total = sum(f.size for f in plan)
    visibility = "public" if public else "private"
    if dry_run:
        click.echo(f"would upload {len(plan)} files ({human_size(total)}) from {folder} "
                   f"to {constants.ENDPOINT}/{repo_id} ({visibility} if created):")
        for f in plan:
            click.echo(f"  {human_size(f.size):>10}  {f.path_in_repo}")
        click.echo(f"left out: {len(left_out)}")
        for item in left_out:
            click.echo(f"  {item.path}  ({item.why})")
        click.echo(f"\n--- {CARD_NAME} ---")
        click.echo((folder / CARD_NAME).read_text(encoding="utf-8"), nl=False)
        return
    if constants.is_offline_mode():
        raise SftmergeError("cannot push: offline mode is on (HF_HUB_OFFLINE=1)")
    from huggingface_hub import HfApi

    api = HfApi(token=_require_token())
    with hub_session(), opened_for_upload(folder, plan) as operations:
        repo = api.create_repo(repo_id, private=not public, exist_ok=True)
        api.create_commit(repo_id=repo.repo_id, operations=operations,
                          commit_message=f"Upload merged model {folder.name} (sftmerge)")
    click.echo(f"pushed {len(plan)} files ({human_size(total)}) to {repo}; left out {len(left_out)}")


@click.group("recipe")
def recipe_group() -> None:
    """Share merge recipes."""


@recipe_group.command("pull")
@click.argument("repo_id")
@click.option("--out", default="recipes", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write <repo name>.yml into.")
@click.option("--revision", default=None, help="Branch, tag or commit of the Hub repository.")
@click.option("--overwrite", is_flag=True, help="Replace an existing recipe of the same name.")
def pull_command(repo_id: str, out: str, revision: Optional[str], overwrite: bool) -> None:
    """Fetch the recipe (mergekit_config.yml) of Hub model REPO_ID into the --out folder.

    It is saved as <repo name>.yml, byte for byte; rerun it with `sftmerge merge`.
    """
    from huggingface_hub import HfApi, constants, hf_hub_download

    from sftmerge.hub.card import RECIPE_NAME, parse_recipe_text
    from sftmerge.io.fsutil import write_text

    _valid_repo_id(repo_id)
    target = Path(out) / f"{repo_id.split('/')[-1]}.yml"
    if target.exists() and not overwrite:
        raise SftmergeError(f"{target} already exists (use --overwrite)")
    with hub_session():
        if not constants.is_offline_mode():
            # One quick call first: hf_hub_download retries an unreachable Hub for half a minute.
            info = HfApi().model_info(repo_id, revision=revision, timeout=hub_timeout())
            if RECIPE_NAME not in {s.rfilename for s in info.siblings or []}:
                raise SftmergeError(f"{repo_id} has no {RECIPE_NAME} (not a mergekit merge)")
        fetched = hf_hub_download(repo_id, RECIPE_NAME, revision=revision, etag_timeout=hub_timeout())
    text = Path(fetched).read_text(encoding="utf-8")
    config = parse_recipe_text(text, f"{RECIPE_NAME} of {repo_id}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, text)  # byte for byte what was merged, header comments included
    n = len(config.referenced_models())
    click.echo(f"wrote {target} ({config.merge_method}, {n} models); rerun: sftmerge merge {target} OUT")
