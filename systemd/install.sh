#!/bin/sh
# `make install` and `make uninstall` run this; see "Run it as a service" in README.md.
#
#   install.sh install   SRC     a virtualenv in $PREFIX with xmppmon from SRC, $BINDIR/xmppmon,
#                                the units in $UNITDIR, an $SYSCONFDIR/xmppmon skeleton
#   install.sh uninstall         removes what install added and the operator left unchanged
#
# Everything lands under $DESTDIR when it is set (staging for a package); the paths written into
# the files are the final ones. Install records what it created in $PREFIX/install-manifest, so
# uninstall removes exactly that: never the operator's configuration or credentials, never the
# database in /var/lib/xmppmon. A second install keeps the operator's files as they are.
set -eu

PREFIX=${PREFIX:-/opt/xmppmon}
BINDIR=${BINDIR:-/usr/bin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
UNITS="xmppmon-agent.service xmppmon-agent@.service xmppmon-sidecar.service"
HERE=$(cd "$(dirname "$0")" && pwd)
CONF=$SYSCONFDIR/xmppmon
MANIFEST=$PREFIX/install-manifest

say() { printf '%s\n' "$*"; }
die() { printf 'make %s: %s\n' "$ACTION" "$*" >&2; exit 1; }

# systemctl only on the live system: not when staging into DESTDIR, not without systemd as PID 1.
live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# Manifest lines: "d PATH" a directory install created, "f SHA256 PATH" a file it wrote,
# "l PATH" a symbolic link. Paths are final (without DESTDIR).
# While installing, the previous manifest is read from $OLD and the new one written to $NEW (both
# outside PREFIX, which `venv --clear` may empty).
record() { printf '%s\n' "$*" >>"$NEW"; }
recorded() { grep -q -x -F "$1" "$OLD"; }

make_dir() {  # make_dir MODE PATH: PATH and its missing parents created and recorded; existing ones left alone
    parent=$(dirname "$2")
    if [ "$parent" != "$2" ] && [ "$parent" != / ]; then make_dir 0755 "$parent"; fi
    if [ -d "$DESTDIR$2" ]; then
        if recorded "d $2"; then record "d $2"; fi
    else
        install -d -m "$1" "$DESTDIR$2"
        record "d $2"
    fi
}

put_file() {  # put_file MODE SOURCE PATH: ours, replaced on every install
    install -m "$1" "$2" "$DESTDIR$3"
    record "f $(sha256sum <"$DESTDIR$3" | cut -d' ' -f1) $3"
}

seed_file() {  # seed_file MODE SOURCE PATH: written only if missing; then it is the operator's
    if [ -e "$DESTDIR$3" ]; then
        awk -v p="$3" '$1 == "f" && $3 == p' "$OLD" >>"$NEW"  # seeded earlier: ours while unchanged
        say "kept $3"
    else
        put_file "$1" "$2" "$3"
    fi
}

do_install() {
    SRC=$1
    [ -f "$SRC/pyproject.toml" ] || die "$SRC is not the xmppmon source tree"
    # Never turn someone else's directory into a virtualenv: uninstall deletes it whole.
    if [ -e "$DESTDIR$PREFIX" ] && [ ! -f "$DESTDIR$MANIFEST" ] && [ -n "$(ls -A "$DESTDIR$PREFIX")" ]; then
        die "$DESTDIR$PREFIX exists and is not an xmppmon installation: choose another PREFIX"
    fi
    link=$DESTDIR$BINDIR/xmppmon
    if { [ -e "$link" ] || [ -L "$link" ]; } && [ "$(readlink "$link" || true)" != "$PREFIX/bin/xmppmon" ]; then
        die "$link exists and is not a link to $PREFIX/bin/xmppmon: remove it or set BINDIR"
    fi
    OLD=$(mktemp) NEW=$(mktemp)
    trap 'rm -f "$OLD" "$NEW"' EXIT
    if [ -f "$DESTDIR$MANIFEST" ]; then cp "$DESTDIR$MANIFEST" "$OLD"; fi

    say "virtualenv $PREFIX"
    make_dir 0755 "$(dirname "$PREFIX")"
    # An existing virtualenv is upgraded in place (its services keep running); a broken one, for
    # instance after the system's Python changed, is made again.
    if ! "$DESTDIR$PREFIX/bin/python" -c '' 2>/dev/null; then
        "$PYTHON" -m venv --clear "$DESTDIR$PREFIX"
    fi
    "$DESTDIR$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check "$SRC" ||
        die "pip could not install xmppmon into $DESTDIR$PREFIX (see above)"
    if [ -n "$DESTDIR" ]; then
        # A virtualenv writes its own path into its scripts: point them at the final place.
        for f in "$DESTDIR$PREFIX"/bin/*; do
            if [ -f "$f" ] && [ ! -L "$f" ] && grep -q -I -F "$DESTDIR$PREFIX" "$f"; then
                sed -i "s|$DESTDIR$PREFIX|$PREFIX|g" "$f"
            fi
        done
    fi

    make_dir 0755 "$BINDIR"
    ln -sfn "$PREFIX/bin/xmppmon" "$link"
    record "l $BINDIR/xmppmon"

    make_dir 0755 "$UNITDIR"
    for unit in $UNITS; do
        sed "s|/usr/bin/xmppmon|$BINDIR/xmppmon|g" "$HERE/$unit" >"$DESTDIR$PREFIX/.unit.tmp"
        put_file 0644 "$DESTDIR$PREFIX/.unit.tmp" "$UNITDIR/$unit"
    done
    rm -f "$DESTDIR$PREFIX/.unit.tmp"

    make_dir 0755 "$CONF"
    make_dir 0700 "$CONF/credentials"
    put_file 0644 "$HERE/agent.toml.example" "$CONF/agent.toml.example"
    put_file 0644 "$HERE/agent.env.example" "$CONF/agent.env.example"
    seed_file 0644 "$HERE/agent.toml.example" "$CONF/agent.toml"
    seed_file 0644 "$HERE/agent.env.example" "$CONF/agent.env"

    sort -u "$NEW" >"$DESTDIR$MANIFEST"

    if live_systemd; then
        systemctl daemon-reload
        say "systemctl daemon-reload: done"
    elif [ -n "$DESTDIR" ]; then
        say "skipped systemctl daemon-reload: DESTDIR is set"
    else
        say "skipped systemctl daemon-reload: systemd is not running"
    fi
    say "installed xmppmon in $PREFIX; next: README.md, \"Run it as a service\""
}

do_uninstall() {
    [ -f "$DESTDIR$MANIFEST" ] || die "nothing to uninstall: $DESTDIR$MANIFEST does not exist"
    if live_systemd; then
        # Units about to disappear must not keep running from a deleted virtualenv, nor stay enabled.
        systemctl disable --now xmppmon-agent.service xmppmon-sidecar.service || true
        systemctl stop 'xmppmon-agent@*.service' || true
        systemctl disable xmppmon-agent@.service || true
    fi
    list=$(mktemp)
    trap 'rm -f "$list"' EXIT
    cp "$DESTDIR$MANIFEST" "$list"
    # Links and files, then the virtualenv, then directories deepest first, each only if empty.
    while read -r kind a b; do
        case $kind in
        l) if [ -L "$DESTDIR$a" ]; then rm -f "$DESTDIR$a"; fi ;;
        f) if [ -f "$DESTDIR$b" ]; then
               if [ "$(sha256sum <"$DESTDIR$b" | cut -d' ' -f1)" = "$a" ]; then
                   rm -f "$DESTDIR$b"
               else
                   say "kept $b (changed since make install)"
               fi
           fi ;;
        esac
    done <"$list"
    rm -rf "$DESTDIR$PREFIX"
    grep '^d ' "$list" | cut -c3- | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2- |
        while read -r dir; do
            if [ -d "$DESTDIR$dir" ] && ! rmdir "$DESTDIR$dir" 2>/dev/null; then say "kept $dir (not empty)"; fi
        done
    if live_systemd; then
        systemctl daemon-reload
    fi
    say "uninstalled xmppmon from $PREFIX; the database in /var/lib/xmppmon is left in place"
}

ACTION=${1:-}
case $ACTION in
install) [ $# -eq 2 ] || die "usage: install.sh install SOURCE_DIR"; do_install "$2" ;;
uninstall) do_uninstall ;;
*) ACTION=install; die "usage: install.sh install SOURCE_DIR | install.sh uninstall" ;;
esac
