_kas_completion() {
    local IFS=$'\n'
    local response

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD _KAS_COMPLETE=bash_complete \
        _KAS_COMPLETE_NOSPACE=1 $1)

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

_kas_completion_setup() {
    complete -o nosort -F _kas_completion kas
}

_kas_completion_setup;
