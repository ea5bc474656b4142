#!/bin/bash
# Capture what a real MRA sends to syslog during real logins (see ../README.md).
#
#   capture.sh MRA OUTDIR      MRA: courier | cyrus | popa3d
#
# PKGROOT (default /tmp/mra/root) holds the MRA's Debian packages unpacked
# with `dpkg -x`. Run as root: everything happens in fresh net, mount, UTS
# and PID namespaces, where PKGROOT is overlaid on /usr, /etc and /var, the
# test user is added to a private /etc, and /dev/log is a socket of
# receiver.py; the machine's own files, services and network are untouched
# and no packet can leave (the net namespace has only lo).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PKGROOT=${PKGROOT:-/tmp/mra/root}
USER_NAME=alice
PASSWORD=s3cret-Pass
WRONG=wrong-Pass

if [ "${1:-}" != --inside ]; then
    mra=$1 out=$(realpath "$2")
    mkdir -p "$out"
    : > "$out/$mra.datagrams"
    exec unshare --net --mount --uts --pid --fork --kill-child --mount-proc \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PKGROOT="$PKGROOT" bash "$0" --inside "$mra" "$out"
fi
mra=$2 out=$3

# -- the namespace ---------------------------------------------------------------------------
mount --make-rprivate /
ip link set lo up
# Documentation addresses beside 127.0.0.1/::1, so captured lines also hold relayable clients.
ip addr add 192.0.2.1/24 dev lo
ip -6 addr add ::1/128 dev lo nodad 2>/dev/null || true
ip -6 addr add 2001:db8::1/64 dev lo nodad
hostname mail

# Scratch space on a tmpfs that only this namespace sees (mounted over /run, which is private too).
mount -t tmpfs -o mode=0755,size=64m capture-run /run
scratch=/run/capture
mkdir -p "$scratch"
for d in etc var; do
    mkdir -p "$scratch/$d/up" "$scratch/$d/wk"
    mount -t overlay "capture-$d" -o "lowerdir=$PKGROOT/$d:/$d,upperdir=$scratch/$d/up,workdir=$scratch/$d/wk" "/$d"
done
mount -t overlay capture-usr -o "lowerdir=$PKGROOT/usr:/usr" /usr
# No resolver but /etc/hosts (there is no network to ask anyway).
rm -f /etc/resolv.conf /etc/nsswitch.conf
printf 'nameserver 127.0.0.1\n' > /etc/resolv.conf
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\n' > /etc/nsswitch.conf
printf '127.0.0.1 localhost\n127.0.1.1 mail\n::1 localhost\n' > /etc/hosts

# A private /dev: the machine's harmless nodes and /dev/log, a socket of receiver.py.
mkdir -p "$scratch/hostdev"
mount --bind /dev "$scratch/hostdev"
mount -t tmpfs -o mode=0755,size=64k capture-dev /dev
for n in null zero full random urandom tty; do
    : > "/dev/$n"
    mount --bind "$scratch/hostdev/$n" "/dev/$n"
done
umount "$scratch/hostdev"
ln -s /proc/self/fd /dev/fd

# The test user, with a password for PAM (shadow) and a home with a Maildir and an mbox.
mkdir -p "$scratch/home"
useradd -m -d "$scratch/home/$USER_NAME" -s /bin/sh "$USER_NAME"
echo "$USER_NAME:$PASSWORD" | chpasswd
su "$USER_NAME" -c 'mkdir -p ~/Maildir/cur ~/Maildir/new ~/Maildir/tmp'
mkdir -p /var/mail && chmod 2775 /var/mail && chgrp mail /var/mail
install -o "$USER_NAME" -g mail -m 0660 /dev/null "/var/mail/$USER_NAME"

login() {  # KIND HOST PORT SOURCE [PASSWORD]
    python3 "$here/client.py" "$1" "$2" "$3" "$4" "$USER_NAME" "${5:-$PASSWORD}" || true
    sleep 0.3
}

wait_port() {  # PORT
    for _ in $(seq 100); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" \
            2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# -- each MRA: set up as its maintainer scripts would (NAME_setup), started and logged in to (NAME_run)
courier_setup() {
    groupadd --system courier
    useradd --system -g courier -d /var/lib/courier -s /usr/sbin/nologin courier
    mkdir -p /run/courier/authdaemon
    chown root:courier /run/courier && chmod 0775 /run/courier
    chown courier:courier /run/courier/authdaemon && chmod 0750 /run/courier/authdaemon
    # AUTH PLAIN for POP3 and IMAP without TLS (Debian offers SASL only over TLS).
    sed -i 's/^POP3AUTH=.*/POP3AUTH="PLAIN LOGIN"/' /etc/courier/pop3d
    sed -i 's/^IMAP_CAPABILITY="\(.*\)"$/IMAP_CAPABILITY="\1 AUTH=PLAIN"/' /etc/courier/imapd
}

courier_run() {
    /usr/sbin/authdaemond start
    /usr/sbin/pop3d start
    /usr/sbin/imapd start
    wait_port 110
    wait_port 143
    login pop-user 127.0.0.1 110 127.0.0.5
    login pop-user ::1 110 ::1
    login pop-user 2001:db8::1 110 2001:db8::1
    login pop-user 192.0.2.1 110 192.0.2.1
    login pop-auth-plain 127.0.0.1 110 127.0.0.6
    login pop-auth-plain ::1 110 ::1
    login imap-login 127.0.0.1 143 127.0.0.7
    login imap-login 2001:db8::1 143 2001:db8::1
    login imap-auth-plain 127.0.0.1 143 127.0.0.8
    login imap-auth-plain ::1 143 ::1
    login pop-user 127.0.0.1 110 127.0.0.9 "$WRONG"
    login pop-user ::1 110 ::1 "$WRONG"
    login imap-login 127.0.0.1 143 127.0.0.9 "$WRONG"
    login imap-auth-plain ::1 143 ::1 "$WRONG"
}

cyrus_setup() {
    useradd --system -g mail -G sasl -d /var/spool/cyrus -s /usr/sbin/nologin cyrus
    # sasldb holds the password in clear, which APOP needs.
    # Debian's popminpoll: 1 refuses a second POP3 login within a minute (after logging it).
    sed -i 's/^popminpoll: 1$/popminpoll: 0/' /etc/imapd.conf
    cat >> /etc/imapd.conf <<CONF
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: /etc/sasldb2
allowapop: yes
CONF
    # Only the services captured (Debian's file also starts nntpd, httpd, ... not unpacked here).
    cat > /etc/cyrus.conf <<CONF
START {
    recover cmd="/usr/sbin/cyrus ctl_cyrusdb -r"
}
SERVICES {
    imap cmd="imapd -U 30" listen="imap" prefork=0 maxchild=10
    pop3 cmd="pop3d -U 30" listen="pop3" prefork=0 maxchild=10
}
EVENTS {
}
CONF
    echo "$PASSWORD" | saslpasswd2 -p -c -f /etc/sasldb2 "$USER_NAME"
    chown cyrus:mail /etc/sasldb2 && chmod 0640 /etc/sasldb2
    mkdir -p /run/cyrus/socket /run/cyrus/proc /run/cyrus/lock
    chown -R cyrus:mail /run/cyrus
    mkdir -p /var/lib/cyrus /var/spool/cyrus/mail /var/spool/sieve
    chown -R cyrus:mail /var/lib/cyrus /var/spool/cyrus /var/spool/sieve
    /usr/lib/cyrus/bin/makedirs
}

cyrus_run() {
    /usr/lib/cyrus/bin/master -C /etc/imapd.conf -M /etc/cyrus.conf &
    wait_port 110
    wait_port 143
    # The first login creates the INBOX (autocreate_quota: 0 in Debian's imapd.conf).
    login imap-login 127.0.0.1 143 127.0.0.7
    login imap-login 2001:db8::1 143 2001:db8::1
    login imap-auth-plain 127.0.0.1 143 127.0.0.8
    login imap-auth-plain ::1 143 ::1
    login pop-user 127.0.0.1 110 127.0.0.5
    login pop-user ::1 110 ::1
    login pop-user 192.0.2.1 110 192.0.2.1
    login pop-apop 127.0.0.1 110 127.0.0.10
    login pop-apop 2001:db8::1 110 2001:db8::1
    login pop-auth-plain 127.0.0.1 110 127.0.0.6
    login pop-auth-plain ::1 110 ::1
    login pop-user 127.0.0.1 110 127.0.0.9 "$WRONG"
    login pop-apop ::1 110 ::1 "$WRONG"
    login imap-login 127.0.0.1 143 127.0.0.9 "$WRONG"
    login imap-auth-plain ::1 143 ::1 "$WRONG"
}

popa3d_setup() {
    groupadd --system popa3d
    useradd --system -g popa3d -d /var/lib/popa3d -s /usr/sbin/nologin popa3d
    mkdir -p /var/lib/popa3d
}

popa3d_run() {
    # Standalone (-D) is how popa3d logs the client ("Session from"); it listens on IPv4 only.
    /usr/sbin/popa3d -D
    wait_port 110
    # It forked into the background: its PID is the listener's.
    local standalone
    standalone=$(ss -Hltnp 'sport = :110' | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1)
    login pop-user 127.0.0.1 110 127.0.0.5
    login pop-user 192.0.2.1 110 192.0.2.1
    login pop-user 127.0.0.1 110 127.0.0.9 "$WRONG"
    kill "$standalone"
    # IPv6: only through inetd mode (stdin is the connection), where popa3d logs no address.
    python3 "$here/inetd.py" ::1 110 /usr/sbin/popa3d &
    local inetd=$!
    sleep 0.5
    login pop-user ::1 110 ::1
    login pop-user ::1 110 ::1 "$WRONG"
    kill "$inetd"
}

case "$mra" in
    courier|cyrus|popa3d) "${mra}_setup" ;;
    *) echo "unknown MRA $mra" >&2; exit 2 ;;
esac

# Capture from here on: only the MRA's own lines, not those of the setup above.
python3 "$here/receiver.py" /dev/log "$out/$mra.datagrams" &
receiver=$!
for _ in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done
"${mra}_run"
sleep 1
kill "$receiver"
