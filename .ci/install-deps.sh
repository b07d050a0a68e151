#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, and only those that are
# missing: on a machine that has everything it runs no apt command at all.
#
# The tests start their own servers in temporary directories, so this script
# never starts (or lets a package start) a system database service.
#
# Needs root, or sudo when run as another user.
set -euo pipefail

# Each `need PACKAGE CHECK [ARGS...]` line names a package and a check that
# succeeds when what the tests use from it is already present. Checks look
# for programs and files rather than package names, so a server installed
# some other way (for example from the PostgreSQL project's own packages)
# counts as present.
#
# runuser/setpriv (util-linux) are not needed: the test kit drops root
# privileges itself. util-linux and procps are Essential/standard on Debian.
needs() {
    need postgresql          have_files '/usr/lib/postgresql/*/bin/postgres' '/usr/lib/postgresql/*/bin/initdb'
    need postgresql-contrib  have_files '/usr/share/postgresql/*/extension/pgcrypto.control'
    need postgresql-client   have_commands psql pgbench pg_isready
    need openssl             have_commands openssl
    need redis-server        have_commands redis-server
    # mariadbd and mariadb-install-db live in /usr/sbin, which is not on
    # every user's PATH; the test kit looks there too.
    need mariadb-server      have_files '/usr/sbin/mariadbd' '/usr/bin/mariadb-install-db'
    need mariadb-client      have_commands mariadb
    need redis-tools         have_commands redis-cli
    # The admin status page is tested in a real headless browser.
    need chromium            have_commands chromium
    need chromium-driver     have_commands chromedriver
    need fonts-dejavu-core   have_files '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf'
    # Several instances behind a load balancer: network namespaces (ip)
    # and a real HAProxy, which the tests start themselves.
    need iproute2            have_commands ip
    need haproxy             have_files '/usr/sbin/haproxy'
    # PyMySQL comes from PyPI (below), through pip.
    need python3             have_commands python3
    need python3-pip         have_pip
    # Packaging: the wheel is installed into a fresh venv; the Debian
    # package is built (dpkg-shlibdeps works out its dependencies),
    # installed (its postinst creates a user with adduser) and its unit
    # checked with systemd-analyze, which runs without systemd as PID 1.
    need python3-venv        have_venv
    need dpkg-dev            have_commands dpkg-shlibdeps
    need adduser             have_files /usr/sbin/adduser
    need systemd             have_commands systemd-analyze
    # ACME: pebble, Let's Encrypt's ACME test server, which the tests
    # start on loopback with real HTTP-01 and TLS-ALPN-01 validation.
    need pebble              have_commands pebble
    deploy_needs
}

missing=()

need() {
    local package=$1
    shift
    if ! "$@"; then
        missing+=("$package")
    fi
}

# Succeeds when every named program is on PATH.
have_commands() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || return 1
    done
}

# Succeeds when the python3 on PATH has pip.
have_pip() {
    python3 -m pip --version >/dev/null 2>&1
}

# Succeeds when python3 can make a venv with pip in it (Debian splits
# ensurepip into python3-venv).
have_venv() {
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1
}

# Succeeds when every glob pattern matches at least one file.
have_files() {
    local pattern
    for pattern in "$@"; do
        compgen -G "$pattern" >/dev/null || return 1
    done
}

# Python client libraries the tests drive, from PyPI into the python3 on
# PATH: PyMySQL (with PyNaCl for MariaDB's ed25519) for the MySQL tests,
# psycopg 3 (with its own libpq) and asyncpg for the pooling tests.
install_python_clients() {
    if python3 -c 'import pymysql, nacl, psycopg, asyncpg' >/dev/null 2>&1; then
        return
    fi
    local packages=('PyMySQL[ed25519]>=1.1' 'psycopg[binary]>=3.1' 'asyncpg>=0.29')
    echo "install-deps: installing ${packages[*]} for $(command -v python3)"
    python3 -m pip install --quiet --disable-pip-version-check "${packages[@]}" ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${packages[@]}"
    python3 -c 'import pymysql, nacl, psycopg, asyncpg'
}

# The packaging tools, built or fetched only when missing: cargo-deb from
# crates.io (a couple of minutes of compiling, once per machine) and
# maturin from PyPI.
install_packaging_tools() {
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "install-deps: installing cargo-deb with cargo install"
        cargo install --locked --quiet cargo-deb
    fi
    if ! maturin --version >/dev/null 2>&1; then
        echo "install-deps: installing maturin for $(command -v python3)"
        python3 -m pip install --quiet --disable-pip-version-check 'maturin>=1.5,<2' ||
            python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'maturin>=1.5,<2'
    fi
    cargo deb --version >/dev/null
    maturin --version >/dev/null
}

# --- deploy/ (docs/deployment.md): the checkers of the Kubernetes
# manifests and the Prometheus rules. promtool comes from Debian's
# prometheus package; kubernetes-validate (which brings PyYAML) checks
# manifests offline against the Kubernetes schemas it bundles, and
# cloudcoil's cert-manager models check the cert-manager objects.
deploy_needs() {
    need prometheus          have_commands promtool
}

# The prometheus package enables its service for the next boot (the
# policy-rc.d below keeps it from starting now); the tests use promtool
# only, so no Prometheus server is left to start with the machine.
disable_prometheus_service() {
    if [[ -e /etc/systemd/system/multi-user.target.wants/prometheus.service ]]; then
        if command -v systemctl >/dev/null 2>&1; then
            "${as_root[@]}" systemctl disable prometheus.service
        else
            "${as_root[@]}" rm -f /etc/systemd/system/multi-user.target.wants/prometheus.service
        fi
    fi
}

install_deploy_checkers() {
    if python3 -c 'import kubernetes_validate, yaml, cloudcoil.models.cert_manager.v1' >/dev/null 2>&1; then
        return
    fi
    local packages=('kubernetes-validate>=1.30' 'cloudcoil.models.cert_manager>=1.17')
    echo "install-deps: installing ${packages[*]} for $(command -v python3)"
    python3 -m pip install --quiet --disable-pip-version-check "${packages[@]}" ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${packages[@]}"
    python3 -c 'import kubernetes_validate, yaml, cloudcoil.models.cert_manager.v1'
}
# --- end of deploy/

needs
if [[ ${#missing[@]} -eq 0 ]]; then
    install_python_clients
    install_deploy_checkers
    install_packaging_tools
    echo "install-deps: all test dependencies present"
    exit 0
fi
echo "install-deps: installing ${missing[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: apt-get not found; install these Debian packages (or their equivalents) by hand: ${missing[*]}" >&2
    exit 1
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: not root and sudo is not available; run as root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    as_root=(sudo)
fi

# Debian's server package creates a cluster and starts it as a service.
# A policy-rc.d that answers 101 ("action forbidden") is Debian's standard
# way to keep package scripts from starting services; an existing one (as in
# most container images) is left as it is.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# Temporary, from intransit .ci/install-deps.sh\nexit 101\n' |
        "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 0755 "$policy"
    trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
disable_prometheus_service

# Check again, so a package that installed but did not provide what the tests
# use fails here rather than in the middle of the test suite.
missing=()
needs
if [[ ${#missing[@]} -ne 0 ]]; then
    echo "install-deps: still missing after installation: ${missing[*]}" >&2
    exit 1
fi
install_python_clients
install_deploy_checkers
install_packaging_tools
echo "install-deps: done"
