#compdef kas

_kas_completion() {
    local -a completions
    local -a completions_with_descriptions
    local -a nospace
    local -a nospace_with_descriptions
    local -a response
    (( ! $+commands[kas] )) && return 1

    response=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) _KAS_COMPLETE=zsh_complete \
        _KAS_COMPLETE_NOSPACE=1 kas)}")

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
    compdef _kas_completion kas
    _kas_completion "$@"
else
    # eval/source/. command, register function for later
    compdef _kas_completion kas
fi
