"""kas's own shell completion classes, loaded only while completing or printing a script.

Their scripts (committed under completions/) understand one item type more than Click's: ``nospace``, for
a completion the user goes on typing after (``key=``, ``dir/``).
"""

from __future__ import annotations

import os
from typing import ClassVar

from click.shell_completion import (
    BashComplete,
    CompletionItem,
    FishComplete,
    ShellComplete,
    ZshComplete,
    add_completion_class,
)

from kas.cli.complete import NOSPACE


def understood(shell: ShellComplete, item: CompletionItem) -> CompletionItem:
    """``item``, or a ``plain`` copy if the calling script does not know the ``nospace`` type.

    kas's scripts announce that they do by setting ``<complete var>_NOSPACE=1``. A script generated
    before (or by plain Click) silently drops item types it does not know, so an upgraded kas behind an
    old installed script would lose every ``key=`` and directory completion; with a space after them it
    still works as it always did.
    """
    if item.type == NOSPACE and os.environ.get(f"{shell.complete_var}_NOSPACE") != "1":
        return CompletionItem(item.value, type="plain", help=item.help)
    return item


BASH_SOURCE = r"""%(complete_func)s() {
    local IFS=$'\n'
    local response

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD %(complete_var)s=bash_complete \
        %(complete_var)s_NOSPACE=1 $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        elif [[ $type == 'nospace' ]]; then
            # key= or dir/: the user goes on typing right after it.
            COMPREPLY+=($value)
            compopt -o nospace
        fi
    done

    return 0
}

%(complete_func)s_setup() {
    complete -o nosort -F %(complete_func)s %(prog_name)s
}

%(complete_func)s_setup;
"""

ZSH_SOURCE = r"""#compdef %(prog_name)s

%(complete_func)s() {
    local -a completions
    local -a completions_with_descriptions
    local -a nospace
    local -a nospace_with_descriptions
    local -a response
    (( ! $+commands[%(prog_name)s] )) && return 1

    response=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) %(complete_var)s=zsh_complete \
        %(complete_var)s_NOSPACE=1 %(prog_name)s)}")

    for type key descr in ${response}; do
        if [[ "$type" == "plain" ]]; then
            if [[ "$descr" == "_" ]]; then
                completions+=("$key")
            else
                completions_with_descriptions+=("$key":"$descr")
            fi
        elif [[ "$type" == "nospace" ]]; then
            # key= or dir/: the user goes on typing right after it, so no suffix (-S '').
            if [[ "$descr" == "_" ]]; then
                nospace+=("$key")
            else
                nospace_with_descriptions+=("$key":"$descr")
            fi
        elif [[ "$type" == "dir" ]]; then
            _path_files -/
        elif [[ "$type" == "file" ]]; then
            _path_files -f
        fi
    done

    if [ -n "$completions_with_descriptions" ]; then
        _describe -V unsorted completions_with_descriptions -U
    fi

    if [ -n "$nospace_with_descriptions" ]; then
        _describe -V unsorted nospace_with_descriptions -U -S ''
    fi

    if [ -n "$completions" ]; then
        compadd -U -V unsorted -a completions
    fi

    if [ -n "$nospace" ]; then
        compadd -U -V unsorted -S '' -a nospace
    fi
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    # autoload from fpath, call function directly; later TABs must call it too, not rerun this file
    # (which would then only register it, so every second TAB completed nothing)
    compdef %(complete_func)s %(prog_name)s
    %(complete_func)s "$@"
else
    # eval/source/. command, register function for later
    compdef %(complete_func)s %(prog_name)s
fi
"""


class KasBashComplete(BashComplete):
    """Bash completion that survives bash splitting ``key=value`` at the ``=``, and knows ``nospace``.

    Bash breaks words at ``=`` (it is in COMP_WORDBREAKS), so ``--set execution_mode=t`` reaches Click as
    ``execution_mode``, ``=``, ``t`` and would complete nothing. The pieces are joined back before Click
    parses them, and since bash replaces only the text after the ``=``, answers lose what precedes it.
    """

    source_template: ClassVar[str] = BASH_SOURCE

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
        return super().format_completion(understood(self, item))


class KasZshComplete(ZshComplete):
    """Zsh completion whose script adds ``nospace`` items without the usual trailing space."""

    source_template: ClassVar[str] = ZSH_SOURCE

    def format_completion(self, item: CompletionItem) -> str:
        return super().format_completion(understood(self, item))


class KasFishComplete(FishComplete):
    """Fish completion: Click's script as it is, every ``nospace`` item sent as ``plain``.

    fish itself adds no space after a completion that ends in ``=`` or ``/``, so its script needs no
    new type; sending one would only make Click's script drop the item.
    """

    def format_completion(self, item: CompletionItem) -> str:
        if item.type == NOSPACE:
            item = CompletionItem(item.value, type="plain", help=item.help)
        return super().format_completion(item)


COMPLETERS: dict[str, type[ShellComplete]] = {
    "bash": KasBashComplete,
    "zsh": KasZshComplete,
    "fish": KasFishComplete,
}


def register() -> None:
    """Make Click answer a completion request with kas's classes instead of its own."""
    for shell, cls in COMPLETERS.items():
        add_completion_class(cls, shell)
