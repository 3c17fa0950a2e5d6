#!/usr/bin/env bash
# A throwaway OpenSSH server on 127.0.0.1 for integration tests.
#
#   scripts/sshd-fixture.sh start [DIR]   start it (installs openssh-server if missing)
#   scripts/sshd-fixture.sh stop  [DIR]   stop it and every session it serves
#
# DIR defaults to ${SSHD_FIXTURE_DIR:-/tmp/cs-sshd-fixture}. The login user is
# ${SSHD_FIXTURE_USER:-cstest}, created on first use with a random password; fixtures in
# several DIRs share it (same password, each DIR's key authorized). Must run as root (it creates a user and
# runs sshd, which needs root for password logins).
#
# `start` writes DIR/fixture.env, one KEY=VALUE per line, values never quoted (the script
# refuses paths that would need quoting), so a shell can source it and a test can split lines
# on the first '=':
#   SSHD_HOST, SSHD_PORT, SSHD_USER, SSHD_PASSWORD,
#   SSHD_KEY          private key (ed25519, no passphrase) authorized for SSHD_USER
#   SSHD_KNOWN_HOSTS  known_hosts file with the host key for [127.0.0.1]:SSHD_PORT
#   SSHD_PIDFILE      pid of the listening sshd
#   SSHD_AUTH_*       the authentication servers   } each block below lists its lines; every
#   SSHD_ALGO_*       algorithms and host keys     } block runs sshd instances of its own,
#   SSHD_JUMP_*       a bastion and its target     } started by `start`, stopped by `stop`
# `start` is idempotent: if this DIR's sshd is already running it is left alone. `stop` removes
# fixture.env, so tests that look for it skip once the fixture is down; keys and sshd.log stay
# for debugging.

set -euo pipefail
# Let failures inside $(...) stop the script too (bash does not by default).
shopt -s inherit_errexit

readonly SSHD=/usr/sbin/sshd
readonly FIXTURE_USER=${SSHD_FIXTURE_USER:-cstest}
# Marks a home directory as ours, so the script never takes over an account it did not create.
readonly USER_MARKER=.cs-sshd-fixture
readonly START_TIMEOUT_S=10
readonly STOP_TIMEOUT_S=5

die() {
    echo "sshd-fixture: $*" >&2
    exit 1
}

log() {
    echo "sshd-fixture: $*" >&2
}

usage() {
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
}

# --- processes -------------------------------------------------------------------------------

# True if PID is the sshd started with this fixture's config (guards against pid reuse).
is_sshd_with() {
    local pid=$1 config=$2 cmdline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$SSHD"*"-f $config"* ]]
}

# Prints the pid stored in the pid file if that process is our running sshd.
running_pid() {
    instance_pid "$DIR" sshd
}

# Prints every descendant of PID, one per line. Reads /proc rather than using pgrep, which a
# minimal image may lack. Must run before the parent dies: orphans get reparented to init.
descendants() {
    local root=$1 stat pid rest ppid
    local -A children=()
    for stat in /proc/[0-9]*/stat; do
        # The command name (field 2) may contain spaces and parentheses: the ppid is the second
        # field after the last ')'.
        pid=${stat#/proc/}
        pid=${pid%/stat}
        # The process may have exited since the glob was expanded.
        { read -r rest <"$stat"; } 2>/dev/null || continue
        rest=${rest##*) }
        read -r _ ppid _ <<<"$rest"
        children[$ppid]+="$pid "
    done
    local queue=("$root") current child
    while ((${#queue[@]})); do
        current=${queue[0]}
        queue=("${queue[@]:1}")
        for child in ${children[$current]:-}; do
            echo "$child"
            queue+=("$child")
        done
    done
}

# True while any of the given pids still runs. A zombie counts as gone: it has exited, and
# whether it is reaped soon depends on the container's init (which may never reap it).
any_alive() {
    local pid stat
    for pid in "$@"; do
        { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || continue
        stat=${stat##*) }
        [[ ${stat:0:1} == Z ]] || return 0
    done
    return 1
}

wait_gone() {
    local timeout_s=$1 deadline
    shift
    deadline=$((SECONDS + timeout_s))
    while any_alive "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# Stops sshd PID and every session it serves: SIGTERM, then SIGKILL for what is left.
stop_tree() {
    local pid=$1 victims
    # Collect the sessions first: once the listener is gone they are reparented and no longer
    # traceable to it. SIGTERM to the listener alone would leave established sessions running.
    mapfile -t victims < <(descendants "$pid")
    victims=("$pid" ${victims[@]+"${victims[@]}"})
    kill -TERM "${victims[@]}" 2>/dev/null || true
    if ! wait_gone "$STOP_TIMEOUT_S" "${victims[@]}"; then
        log "sshd $pid: still running after SIGTERM, sending SIGKILL"
        kill -KILL "${victims[@]}" 2>/dev/null || true
        wait_gone "$STOP_TIMEOUT_S" "${victims[@]}" || die "processes still alive: ${victims[*]}"
    fi
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True if any socket on this machine uses local port PORT (any address, any state).
port_in_use() {
    local hex
    hex=$(printf '%04X' "$1")
    grep -qsE "^ *[0-9]+: [0-9A-F]+:$hex " /proc/net/tcp /proc/net/tcp6
}

pick_free_port() {
    local port tries
    for ((tries = 0; tries < 100; tries++)); do
        port=$((20000 + RANDOM % 30000))
        port_in_use "$port" || {
            echo "$port"
            return 0
        }
    done
    die "no free port found"
}

# --- setup -----------------------------------------------------------------------------------

install_openssh() {
    if [[ -x $SSHD ]] && command -v ssh-keygen >/dev/null; then
        return 0
    fi
    log "installing openssh-server"
    # Keep the package's own sshd from starting on port 22: the fixture must only ever run
    # the server it starts itself. policy-rc.d is Debian's switch for exactly this.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                openssh-server openssh-client >/dev/null
    } || status=$?
    if ((created_policy)); then
        rm -f "$policy"
    fi
    ((status == 0)) || die "apt-get install openssh-server failed ($status)"
    [[ -x $SSHD ]] || die "$SSHD still missing after install"
}

random_password() {
    # Letters and digits only, so the env file needs no quoting. No pipe from /dev/urandom:
    # with pipefail, the reader closing early would fail the script with SIGPIPE.
    local raw
    raw=$(head -c 32 /dev/urandom | base64 -w0)
    raw=${raw//[^A-Za-z0-9]/}
    echo "${raw:0:24}"
}

# Creates the test user if needed, sets its password and authorizes CLIENT_KEY; prints the
# password. The password is kept in the user's marker file and CLIENT_KEY is added to (not
# written over) authorized_keys, so fixtures in several DIRs can share the user.
setup_user() {
    local home marker password
    if id "$FIXTURE_USER" >/dev/null 2>&1; then
        home=$(getent passwd "$FIXTURE_USER" | cut -d: -f6)
        [[ -e $home/$USER_MARKER ]] ||
            die "user $FIXTURE_USER exists and was not created by this script; set SSHD_FIXTURE_USER"
    else
        useradd --create-home --shell /bin/bash "$FIXTURE_USER"
        home=$(getent passwd "$FIXTURE_USER" | cut -d: -f6)
    fi
    marker=$home/$USER_MARKER
    password=$(cat "$marker" 2>/dev/null || true)
    if [[ ! $password =~ ^[A-Za-z0-9]{16,}$ ]]; then
        password=$(random_password)
        # Readable by root only, from the start: it holds the password.
        install -m 600 -o root -g root /dev/null "$marker"
        echo "$password" >"$marker"
    fi
    echo "$FIXTURE_USER:$password" | chpasswd >&2

    local keys=$home/.ssh/authorized_keys
    install -d -m 700 -o "$FIXTURE_USER" -g "$FIXTURE_USER" "$home/.ssh"
    if ! grep -qxF "$(<"$CLIENT_KEY.pub")" "$keys" 2>/dev/null; then
        cat "$CLIENT_KEY.pub" >>"$keys"
    fi
    chown "$FIXTURE_USER:$FIXTURE_USER" "$keys"
    chmod 600 "$keys"
    echo "$password"
}

new_key() {
    rm -f "$1" "$1.pub"
    ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$1"
}

# --- sshd instances ---------------------------------------------------------------------------
# The main server and each block below (authentication, algorithms, jump hosts) are sshd
# instances, each named NAME in a directory: DIR/NAME.conf, NAME.pid, NAME.log. `instance_start`
# takes the instance's own config lines on stdin and writes them before the common ones: sshd
# keeps the first value it reads of a keyword, so an instance overrides a common line by giving
# its own. (HostKey, Port and ListenAddress add up instead, so only instances set HostKey.)

# Prints the pid of instance NAME in DIR if it runs with its own config (not a reused pid).
instance_pid() {
    local dir=$1 name=$2 pid
    [[ -s $dir/$name.pid ]] || return 1
    pid=$(<"$dir/$name.pid")
    is_sshd_with "$pid" "$dir/$name.conf" || return 1
    echo "$pid"
}

# Starts instance NAME in DIR (its config lines on stdin) on PORT, or on a free port if PORT is
# empty; prints the port.
instance_start() {
    local dir=$1 name=$2 fixed_port=${3:-} own port attempt deadline conf=$1/$2.conf
    own=$(cat)
    # Another process may take the picked port between the check and sshd's bind.
    for attempt in 1 2 3 4 5; do
        port=${fixed_port:-$(pick_free_port)}
        cat >"$conf" <<EOF
# Written by scripts/sshd-fixture.sh; rewritten on every start.
$own
# Common to every instance.
Port $port
ListenAddress 127.0.0.1
PidFile $dir/$name.pid
AllowUsers $FIXTURE_USER
PermitRootLogin no
PasswordAuthentication yes
PubkeyAuthentication yes
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
# Debian's sshd checks passwords against /etc/shadow itself when PAM is off, and PAM would
# only add login-session noise (and needs more of the system set up).
UsePAM no
# The fixture's files live in a directory other users may be able to write.
StrictModes no
# Tests open many connections at once; the default (10:30:100) randomly drops handshakes
# beyond 10 pending ones.
MaxStartups 100
LogLevel VERBOSE
X11Forwarding no
PrintMotd no
PrintLastLog no
EOF
        # OpenSSH 9.8+ penalises sources that fail logins, which would block 127.0.0.1 after a
        # test's deliberate bad-password attempts. Older versions reject the option.
        if "$SSHD" -t -f "$conf" -o PerSourcePenalties=no >/dev/null 2>&1; then
            echo "PerSourcePenalties no" >>"$conf"
        fi
        "$SSHD" -t -f "$conf" || die "sshd rejected $conf"
        rm -f "$dir/$name.pid"
        # sshd binds before it daemonizes, so a taken port shows up as a failed start.
        if "$SSHD" -f "$conf" -E "$dir/$name.log"; then
            deadline=$((SECONDS + START_TIMEOUT_S))
            until port_open "$port" && instance_pid "$dir" "$name" >/dev/null; do
                if ((SECONDS >= deadline)); then
                    tail -n 20 "$dir/$name.log" >&2 || true
                    die "sshd $dir/$name did not start listening on 127.0.0.1:$port"
                fi
                sleep 0.1
            done
            echo "$port"
            return 0
        fi
        log "sshd $dir/$name could not start on port $port (attempt $attempt)"
    done
    die "sshd $dir/$name failed to start"
}

# Stops instance NAME in DIR and every session it serves, if it runs.
instance_stop() {
    local dir=$1 name=$2 pid
    if pid=$(instance_pid "$dir" "$name"); then
        stop_tree "$pid"
        log "stopped sshd $dir/$name ($pid)"
    fi
    rm -f "$dir/$name.pid"
}

# --- authentication servers (SSHD_AUTH_*) ----------------------------------------------------
# Two more sshd instances for the authentication tests (tests/openssh_auth.rs), each with its
# own config, pid file and log under DIR/auth/, started by `start` and stopped by `stop`:
#   SSHD_AUTH_KBDINT_PORT   keyboard-interactive only: PasswordAuthentication no,
#                           KbdInteractiveAuthentication yes, UsePAM yes (PAM asks for the
#                           password of SSHD_USER)
#   SSHD_AUTH_PUBKEY_PORT   public key only, with its own authorized_keys and a trusted user CA
#   SSHD_AUTH_KEY           ed25519 key encrypted with SSHD_AUTH_PASSPHRASE, authorized there
#   SSHD_AUTH_PASSPHRASE    its passphrase (letters and digits)
#   SSHD_AUTH_CERT_KEY      ed25519 key (no passphrase) NOT authorized, with
#                           SSHD_AUTH_CERT_KEY-cert.pub signed by the trusted CA for SSHD_USER
#   SSHD_AUTH_KNOWN_HOSTS   known_hosts for both ports
# Both use the main fixture's host key and user.

auth_paths() {
    AUTH_DIR=$DIR/auth
    AUTH_KEY=$AUTH_DIR/client_encrypted
    AUTH_CERT_KEY=$AUTH_DIR/client_cert
    AUTH_CA=$AUTH_DIR/user_ca
    AUTH_PASSPHRASE_FILE=$AUTH_DIR/passphrase
    AUTH_KNOWN_HOSTS=$AUTH_DIR/known_hosts
}

auth_start() {
    auth_paths
    mkdir -p "$AUTH_DIR"
    chmod 755 "$AUTH_DIR"
    local passphrase
    if [[ ! -s $AUTH_PASSPHRASE_FILE ]]; then
        install -m 600 /dev/null "$AUTH_PASSPHRASE_FILE"
        random_password >"$AUTH_PASSPHRASE_FILE"
    fi
    passphrase=$(<"$AUTH_PASSPHRASE_FILE")
    if [[ ! -s $AUTH_KEY ]]; then
        rm -f "$AUTH_KEY" "$AUTH_KEY.pub"
        ssh-keygen -q -t ed25519 -N "$passphrase" -C "$FIXTURE_USER@sshd-fixture-encrypted" \
            -f "$AUTH_KEY"
    fi
    [[ -s $AUTH_CA ]] || new_key "$AUTH_CA" "sshd-fixture-user-ca"
    [[ -s $AUTH_CERT_KEY ]] || new_key "$AUTH_CERT_KEY" "$FIXTURE_USER@sshd-fixture-cert"
    # Signed on every start, so it never expires on a long-lived machine.
    ssh-keygen -q -s "$AUTH_CA" -I "$FIXTURE_USER-fixture" -n "$FIXTURE_USER" -V -5m:+30d \
        "$AUTH_CERT_KEY.pub"
    cp "$AUTH_KEY.pub" "$AUTH_DIR/authorized_keys"
    chmod 644 "$AUTH_DIR/authorized_keys" "$AUTH_CA.pub"

    AUTH_KBDINT_PORT=$(
        instance_start "$AUTH_DIR" kbdint <<EOF
HostKey $DIR/ssh_host_ed25519_key
PasswordAuthentication no
PubkeyAuthentication no
KbdInteractiveAuthentication yes
# Without PAM, sshd has no keyboard-interactive password prompt to offer.
UsePAM yes
EOF
    )
    AUTH_PUBKEY_PORT=$(
        instance_start "$AUTH_DIR" pubkey <<EOF
HostKey $DIR/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
AuthorizedKeysFile $AUTH_DIR/authorized_keys
TrustedUserCAKeys $AUTH_CA.pub
EOF
    )
    local host_key port
    host_key=$(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")
    : >"$AUTH_KNOWN_HOSTS"
    for port in "$AUTH_KBDINT_PORT" "$AUTH_PUBKEY_PORT"; do
        echo "[127.0.0.1]:$port $host_key" >>"$AUTH_KNOWN_HOSTS"
    done
    log "auth sshds: keyboard-interactive on $AUTH_KBDINT_PORT, public key on $AUTH_PUBKEY_PORT"
}

# The fixture.env lines of the authentication servers.
auth_env() {
    cat <<EOF
SSHD_AUTH_KBDINT_PORT=$AUTH_KBDINT_PORT
SSHD_AUTH_PUBKEY_PORT=$AUTH_PUBKEY_PORT
SSHD_AUTH_KEY=$AUTH_KEY
SSHD_AUTH_PASSPHRASE=$(<"$AUTH_PASSPHRASE_FILE")
SSHD_AUTH_CERT_KEY=$AUTH_CERT_KEY
SSHD_AUTH_KNOWN_HOSTS=$AUTH_KNOWN_HOSTS
EOF
}

auth_stop() {
    auth_paths
    local name
    for name in kbdint pubkey; do
        instance_stop "$AUTH_DIR" "$name"
    done
}

# --- algorithms and host keys (SSHD_ALGO_*) ---------------------------------------------------
# Three more sshds for tests/openssh_algorithms.rs, password logins as the fixture's user:
#   legacy  KexAlgorithms diffie-hellman-group14-sha1, HostKeyAlgorithms ssh-rsa,
#           Ciphers aes128-cbc, MACs hmac-sha1, an RSA host key (an old device)
#   modern  ed25519, ecdsa and rsa host keys, OpenSSH's defaults
#   cert    an ed25519 host key with a host certificate (principal 127.0.0.1) from a CA
# and the known_hosts files the tests check them with. `algo_start` prints its KEY=VALUE lines:
#   SSHD_ALGO_LEGACY_PORT, SSHD_ALGO_MODERN_PORT, SSHD_ALGO_CERT_PORT
#   SSHD_ALGO_KH_LEGACY       the legacy server's RSA key
#   SSHD_ALGO_KH_RSA_ECDSA    the modern server's RSA and ECDSA keys, not its ed25519 one
#   SSHD_ALGO_KH_HASHED       the same, hashed (ssh-keyscan -H)
#   SSHD_ALGO_KH_REVOKED      the modern server's ed25519 and ecdsa keys, ed25519 also under
#                             @revoked (ssh then asks for ecdsa, and connects)
#   SSHD_ALGO_KH_REVOKED_ONLY its ed25519 key, also under @revoked (ssh refuses)
#   SSHD_ALGO_KH_UNLISTED     only a key of another host
#   SSHD_ALGO_KH_CA           @cert-authority line for the cert server's CA
#   SSHD_ALGO_KH_WRONG_CA     @cert-authority line for another CA
#   SSHD_ALGO_ASKPASS         SSH_ASKPASS script answering the password, for the ssh client

# A key of TYPE at ALGO_DIR/NAME, kept across restarts like a device's host key.
algo_key() {
    [[ -s $ALGO_DIR/$2 ]] || ssh-keygen -q -t "$1" -N '' -C "algo-fixture" -f "$ALGO_DIR/$2"
}

# A known_hosts line for [127.0.0.1]:PORT and the public key ALGO_DIR/NAME.pub.
algo_kh() {
    echo "[127.0.0.1]:$1 $(cut -d' ' -f1,2 "$ALGO_DIR/$2.pub")"
}

algo_start() {
    local password=$1 legacy modern cert
    ALGO_DIR=$DIR/algo
    algo_stop
    mkdir -p "$ALGO_DIR"
    algo_key rsa legacy_rsa
    algo_key ed25519 modern_ed25519
    algo_key ecdsa modern_ecdsa
    algo_key rsa modern_rsa
    algo_key ed25519 cert_ed25519
    algo_key ed25519 ca
    algo_key ed25519 wrong_ca
    algo_key ed25519 stranger
    # Signed anew on every start, so its validity period always covers the test run.
    rm -f "$ALGO_DIR/cert_ed25519-cert.pub"
    ssh-keygen -q -s "$ALGO_DIR/ca" -I algo-fixture-host -h -n 127.0.0.1 -V -5m:+7d \
        "$ALGO_DIR/cert_ed25519.pub"

    legacy=$(instance_start "$ALGO_DIR" legacy <<CONF
PubkeyAuthentication no
HostKey $ALGO_DIR/legacy_rsa
KexAlgorithms diffie-hellman-group14-sha1
HostKeyAlgorithms ssh-rsa
Ciphers aes128-cbc
MACs hmac-sha1
CONF
    )
    modern=$(instance_start "$ALGO_DIR" modern <<CONF
PubkeyAuthentication no
HostKey $ALGO_DIR/modern_ed25519
HostKey $ALGO_DIR/modern_ecdsa
HostKey $ALGO_DIR/modern_rsa
CONF
    )
    cert=$(instance_start "$ALGO_DIR" cert <<CONF
PubkeyAuthentication no
HostKey $ALGO_DIR/cert_ed25519
HostCertificate $ALGO_DIR/cert_ed25519-cert.pub
CONF
    )

    algo_kh "$legacy" legacy_rsa >"$ALGO_DIR/kh_legacy"
    { algo_kh "$modern" modern_rsa; algo_kh "$modern" modern_ecdsa; } >"$ALGO_DIR/kh_rsa_ecdsa"
    ssh-keyscan -H -p "$modern" -t rsa,ecdsa 127.0.0.1 2>/dev/null >"$ALGO_DIR/kh_hashed" || true
    [[ $(grep -c '^|1|' "$ALGO_DIR/kh_hashed") == 2 ]] ||
        die "algo: ssh-keyscan -H did not give the two hashed keys"
    {
        algo_kh "$modern" modern_ed25519
        algo_kh "$modern" modern_ecdsa
        echo "@revoked * $(cut -d' ' -f1,2 "$ALGO_DIR/modern_ed25519.pub")"
    } >"$ALGO_DIR/kh_revoked"
    {
        algo_kh "$modern" modern_ed25519
        echo "@revoked * $(cut -d' ' -f1,2 "$ALGO_DIR/modern_ed25519.pub")"
    } >"$ALGO_DIR/kh_revoked_only"
    echo "[10.255.255.1]:$modern $(cut -d' ' -f1,2 "$ALGO_DIR/stranger.pub")" >"$ALGO_DIR/kh_unlisted"
    echo "@cert-authority [127.0.0.1]:$cert $(cut -d' ' -f1,2 "$ALGO_DIR/ca.pub")" >"$ALGO_DIR/kh_ca"
    echo "@cert-authority [127.0.0.1]:$cert $(cut -d' ' -f1,2 "$ALGO_DIR/wrong_ca.pub")" \
        >"$ALGO_DIR/kh_wrong_ca"
    # Root-only: it holds the password (letters and digits only, see random_password).
    install -m 700 /dev/null "$ALGO_DIR/askpass"
    printf '#!/bin/sh\necho %s\n' "$password" >"$ALGO_DIR/askpass"

    cat <<ENV
SSHD_ALGO_LEGACY_PORT=$legacy
SSHD_ALGO_MODERN_PORT=$modern
SSHD_ALGO_CERT_PORT=$cert
SSHD_ALGO_KH_LEGACY=$ALGO_DIR/kh_legacy
SSHD_ALGO_KH_RSA_ECDSA=$ALGO_DIR/kh_rsa_ecdsa
SSHD_ALGO_KH_HASHED=$ALGO_DIR/kh_hashed
SSHD_ALGO_KH_REVOKED=$ALGO_DIR/kh_revoked
SSHD_ALGO_KH_REVOKED_ONLY=$ALGO_DIR/kh_revoked_only
SSHD_ALGO_KH_UNLISTED=$ALGO_DIR/kh_unlisted
SSHD_ALGO_KH_CA=$ALGO_DIR/kh_ca
SSHD_ALGO_KH_WRONG_CA=$ALGO_DIR/kh_wrong_ca
SSHD_ALGO_ASKPASS=$ALGO_DIR/askpass
ENV
    log "algo: legacy sshd on $legacy, modern on $modern, cert on $cert"
}

algo_stop() {
    local name
    ALGO_DIR=$DIR/algo
    for name in legacy modern cert; do
        instance_stop "$ALGO_DIR" "$name"
    done
}

# --- jump hosts (issue 11): a bastion and a target reached through it --------------------------
# Two more servers, self-contained (their own configs, host keys, pid files and logs under
# DIR/jump), same user, password and client key as the main one. Lines in fixture.env:
#   SSHD_JUMP_BASTION_PORT   AllowTcpForwarding yes, LogLevel DEBUG1 (its log shows
#                            `server_request_direct_tcpip: ... target 127.0.0.1 port N`)
#   SSHD_JUMP_TARGET_PORT    AllowTcpForwarding no (as a bastion, it refuses to forward)
#   SSHD_JUMP_KNOWN_HOSTS    known_hosts with both servers' host keys
#   SSHD_JUMP_BASTION_LOG, SSHD_JUMP_TARGET_LOG, SSHD_JUMP_BASTION_PIDFILE

readonly JUMP_SERVERS=(bastion target)

jump_start() {
    local dir=$DIR/jump
    jump_stop
    mkdir -p "$dir"
    chmod 755 "$dir"
    local name
    for name in "${JUMP_SERVERS[@]}"; do
        [[ -s $dir/${name}_host_ed25519_key ]] ||
            new_key "$dir/${name}_host_ed25519_key" "sshd-fixture-$name"
    done
    JUMP_BASTION_PORT=$(
        instance_start "$dir" bastion <<EOF
HostKey $dir/bastion_host_ed25519_key
AllowTcpForwarding yes
LogLevel DEBUG1
EOF
    )
    JUMP_TARGET_PORT=$(
        instance_start "$dir" target <<EOF
HostKey $dir/target_host_ed25519_key
AllowTcpForwarding no
EOF
    )
    {
        echo "[127.0.0.1]:$JUMP_BASTION_PORT $(cut -d' ' -f1,2 "$dir/bastion_host_ed25519_key.pub")"
        echo "[127.0.0.1]:$JUMP_TARGET_PORT $(cut -d' ' -f1,2 "$dir/target_host_ed25519_key.pub")"
    } >"$dir/known_hosts"
}

# The fixture.env lines of the jump servers.
jump_env() {
    local dir=$DIR/jump
    cat <<EOF
SSHD_JUMP_BASTION_PORT=$JUMP_BASTION_PORT
SSHD_JUMP_TARGET_PORT=$JUMP_TARGET_PORT
SSHD_JUMP_KNOWN_HOSTS=$dir/known_hosts
SSHD_JUMP_BASTION_LOG=$dir/bastion.log
SSHD_JUMP_TARGET_LOG=$dir/target.log
SSHD_JUMP_BASTION_PIDFILE=$dir/bastion.pid
EOF
}

jump_stop() {
    local name
    for name in "${JUMP_SERVERS[@]}"; do
        instance_stop "$DIR/jump" "$name"
    done
}

cmd_start() {
    local pid port password
    if pid=$(running_pid); then
        log "already running (pid $pid), see $ENV_FILE"
        return 0
    fi
    install_openssh
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    # Privilege separation directory; Debian creates it only when its own service starts.
    mkdir -p /run/sshd
    chmod 755 /run/sshd

    # Keys survive restarts, like a real device's host key and a user's own key.
    [[ -s $DIR/ssh_host_ed25519_key ]] || new_key "$DIR/ssh_host_ed25519_key" "sshd-fixture-host"
    [[ -s $CLIENT_KEY ]] || new_key "$CLIENT_KEY" "$FIXTURE_USER@sshd-fixture"
    password=$(setup_user)

    # SSHD_FIXTURE_PORT brings a stopped server back on the port its clients know.
    port=$(
        instance_start "$DIR" sshd "${SSHD_FIXTURE_PORT:-}" <<EOF
HostKey $DIR/ssh_host_ed25519_key
MaxSessions 10
EOF
    )

    echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" >"$KNOWN_HOSTS"
    auth_start
    jump_start
    # Written last and atomically: its presence means the server is up.
    local tmp=$ENV_FILE.tmp
    (
        umask 077
        cat >"$tmp" <<EOF
SSHD_HOST=127.0.0.1
SSHD_PORT=$port
SSHD_USER=$FIXTURE_USER
SSHD_PASSWORD=$password
SSHD_KEY=$CLIENT_KEY
SSHD_KNOWN_HOSTS=$KNOWN_HOSTS
SSHD_PIDFILE=$PIDFILE
EOF
        auth_env >>"$tmp"
        jump_env >>"$tmp"
    )
    algo_start "$password" >>"$tmp"
    mv "$tmp" "$ENV_FILE"
    log "sshd running on 127.0.0.1:$port (pid $(<"$PIDFILE")), see $ENV_FILE"
}

cmd_stop() {
    local pid
    rm -f "$ENV_FILE"
    auth_stop
    jump_stop
    algo_stop
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    stop_tree "$pid"
    rm -f "$PIDFILE"
    log "stopped sshd $pid and its sessions"
}

main() {
    (($# >= 1 && $# <= 2)) || usage
    local action=$1
    DIR=${2:-${SSHD_FIXTURE_DIR:-/tmp/cs-sshd-fixture}}
    [[ $DIR == /* ]] || DIR=$PWD/$DIR
    # fixture.env and sshd_config hold these paths unquoted.
    [[ $DIR =~ ^[A-Za-z0-9/._-]+$ ]] || die "DIR must be a plain path (letters, digits, / . _ -): $DIR"
    [[ $FIXTURE_USER =~ ^[a-z_][a-z0-9_-]*$ && $FIXTURE_USER != root ]] ||
        die "SSHD_FIXTURE_USER must be a plain, non-root user name: $FIXTURE_USER"
    ((EUID == 0)) || die "must run as root"

    PIDFILE=$DIR/sshd.pid
    CLIENT_KEY=$DIR/client_ed25519
    KNOWN_HOSTS=$DIR/known_hosts
    ENV_FILE=$DIR/fixture.env

    case $action in
    start) cmd_start ;;
    stop) cmd_stop ;;
    *) usage ;;
    esac
}

main "$@"
