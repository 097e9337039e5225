"""Who could have written a file kas is about to obey: the ownership and mode rules for configs and state.

A config can set ``PATH`` for the agents kas starts, and the state directory holds the rows that
``kas instance stop`` acts on, so both must be writable by the user alone. The rules follow git's
``safe.directory``: owned by the user (or root), not world-writable, and group-writable only for the
owner's private group (the one Ubuntu's umask 002 relies on).
"""

from __future__ import annotations

import os
import stat


def user_name(uid: int, *, with_uid: bool = True) -> str:
    """``name (uid N)`` (or ``name``), or ``uid N`` for an id with no account, as messages show owners."""
    import pwd  # here, not at the top: the account database is read only to explain a refusal

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
    return f"{name} (uid {uid})" if with_uid else name


def group_name(gid: int) -> str:
    """A group's name, or ``gid N`` for an id with no group entry."""
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def is_private_group(gid: int, owner_uid: int) -> bool:
    """True for a user private group: named like its owner and with no other member.

    Members are both the group's listed members and every other account whose primary group it is;
    a group we cannot look up is not private (we cannot tell who is in it).
    """
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        return False
    if group.gr_name != owner or any(member != owner for member in group.gr_mem):
        return False
    return all(account.pw_gid != gid or account.pw_uid == owner_uid for account in pwd.getpwall())


def others_can_write(st: os.stat_result) -> str | None:
    """Why someone other than the owner may change this file or directory, or None when nobody can.

    The sticky bit is not enough: it only stops others from deleting or renaming entries they do not
    own, while they can still add their own.
    """
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        return f"writable by everyone (mode {mode:04o})"
    if mode & stat.S_IWGRP and not is_private_group(st.st_gid, st.st_uid):
        return f"writable by group {group_name(st.st_gid)} (mode {mode:04o})"
    return None


def write_fix(st: os.stat_result) -> str:
    """The chmod that takes write access away from others, matching ``others_can_write``."""
    who = "o" if st.st_mode & stat.S_IWOTH else ""
    if st.st_mode & stat.S_IWGRP and not is_private_group(st.st_gid, st.st_uid):
        who = "g" + who
    return f"chmod {who}-w"
