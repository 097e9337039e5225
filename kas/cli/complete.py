"""Dynamic shell completion: instance ids, profile names, ``--set`` keys. Cheap imports only."""

from __future__ import annotations

import click
from click.shell_completion import BashComplete, CompletionItem

from kas.profiles import KEYS, PROFILES


def instance_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Ids from the registry, newest first; no database yet, or an unusable one, means nothing to offer.

    A completion must never print a traceback into the user's command line: the command itself reports
    what is wrong with the state directory or the database when it runs.
    """

    from kas.errors import KasError
    from kas.registry import DB_NAME, Registry
    from kas.statedir import state_dir

    try:
        if not (state_dir() / DB_NAME).exists():
            return []
        registry = Registry(timeout=0.5)
    except KasError:
        return []
    try:
        rows = registry.id_candidates(incomplete)
    except KasError:
        return []
    finally:
        registry.close()
    return [CompletionItem(inst_id, help=f"{name} ({status})") for inst_id, name, status in rows]


def set_keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``--set KEY=VALUE``: complete the key, then the choices of choice keys."""
    if "=" in incomplete:
        name, _, value = incomplete.partition("=")
        options = PROFILES if name == "profile" else KEYS[name].completions() if name in KEYS else ()
        return [CompletionItem(f"{name}={o}") for o in options if o.startswith(value)]
    names = [*KEYS, "profile"]
    return [
        CompletionItem(f"{k}=", help=KEYS[k].help if k in KEYS else "Which preset to start from.")
        for k in names
        if k.startswith(incomplete)
    ]


def profile_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(p) for p in PROFILES if p.startswith(incomplete)]


def plan_files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``*.toml`` files (and directories to descend into) under what has been typed so far."""
    import os

    head = os.path.dirname(incomplete)
    try:
        names = sorted(os.listdir(head or "."))
    except OSError:
        return []
    items = []
    for name in names:
        shown = os.path.join(head, name)
        if name.startswith(".") or not shown.startswith(incomplete):
            continue
        if os.path.isdir(shown):
            items.append(CompletionItem(shown + "/", type="plain"))
        elif name.endswith(".toml"):
            items.append(CompletionItem(shown, type="plain"))
    return items


class KasBashComplete(BashComplete):
    """Bash completion that survives bash splitting ``key=value`` at the ``=``.

    Bash breaks words at ``=`` (it is in COMP_WORDBREAKS), so ``--set execution_mode=t`` reaches Click as
    ``execution_mode``, ``=``, ``t`` and would complete nothing. The pieces are joined back before Click
    parses them, and since bash replaces only the text after the ``=``, answers lose what precedes it.
    """

    def get_completion_args(self) -> tuple[list[str], str]:
        args, incomplete = super().get_completion_args()
        words: list[str] = []
        glue = False
        for word in [*args, incomplete]:
            if word == "=" and words:
                words[-1] += word
                glue = True
            elif glue:
                words[-1] += word
                glue = False
            else:
                words.append(word)
        joined = words.pop()
        self.replaced = joined[: joined.rindex("=") + 1] if joined != incomplete else ""
        return words, joined

    def format_completion(self, item: CompletionItem) -> str:
        if self.replaced and item.value.startswith(self.replaced):
            item = CompletionItem(item.value[len(self.replaced) :], type=item.type, help=item.help)
        return super().format_completion(item)
