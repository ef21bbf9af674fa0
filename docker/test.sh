#!/usr/bin/env bash
# The containerised integration test: builds the qemud image on a locally
# made Debian base, runs two qemud "hosts" and a client on a private internal
# network (docker/compose.yml), drives both hosts with virsh and
# python3-libvirt over TCP and TLS (certificates made here), starts a
# firmware-only guest inside each host; then installs the Debian package in a
# clean container and checks `virsh -c qemu:///system` finds the daemon with
# no socket flag.
#
# The Docker engine runs in a network namespace made for the test, with its
# own socket and data directory, so its bridges and the containers' traffic
# never touch the host's network; the images it needs are made offline (the
# base by debootstrap on the host, with qemud's runtime packages baked in).
# Prints a skip line and exits 0 where no Docker engine can run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { echo "docker test: $*"; }

work=$(mktemp -d)
netns="qemud-docker-$$"
project="qemudtest$$"
dockerd_pid=""
cleanup() {
    set +e
    if [ -f "$work/compose-up" ]; then
        docker-compose -p "$project" -f docker/compose.yml down -v -t 5 >/dev/null 2>&1
    fi
    docker rm -f "$project-deb" >/dev/null 2>&1
    docker rmi -f "qemud-test:$project" >/dev/null 2>&1
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null
        wait "$dockerd_pid" 2>/dev/null
    fi
    ip netns del "$netns" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

for tool in docker dockerd docker-compose debootstrap ip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "SKIPPED: $tool is not installed"
        exit 0
    fi
done
if ! ip netns add "$netns" 2>"$work/netns.err"; then
    say "SKIPPED: cannot make a network namespace: $(cat "$work/netns.err")"
    exit 0
fi
ip netns exec "$netns" ip link set lo up
export DOCKER_HOST="unix://$work/docker.sock"
# nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroups.
nsenter --net="/run/netns/$netns" dockerd --host "$DOCKER_HOST" \
    --data-root /var/lib/qemud-docker-test --exec-root "$work/exec" --pidfile "$work/docker.pid" \
    --bridge=none --iptables=false --ip6tables=false >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
done
if ! docker info >/dev/null 2>&1; then
    say "SKIPPED: cannot start a Docker engine here:"
    tail -n 5 "$work/dockerd.log" | sed 's/^/  /'
    exit 0
fi

say "building release binaries and the package"
bash packaging/build-deb.sh >/dev/null
deb=$(ls -1t target/debian/qemud_*.deb | head -n 1)

say "making the Debian base image (with qemud's runtime packages)"
base=$(bash docker/make-base.sh qemud-runtime:bookworm \
    qemu-system-x86,qemu-utils,ovmf,libvirt-clients,python3-libvirt,ca-certificates)
image="qemud-test:$project"
say "building the qemud image on $base"
docker build -q --build-arg BASE_IMAGE="$base" \
    -f docker/Dockerfile -t "$image" . >/dev/null

say "making TLS material"
pki="$work/pki"
mkdir -p "$pki"
openssl_quiet() { openssl "$@" >/dev/null 2>&1; }
openssl_quiet req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/O=qemud test/CN=qemud test CA" \
    -keyout "$pki/cakey.pem" -out "$pki/cacert.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
issue() { # NAME DIR KIND(server|client) CERTNAME KEYNAME
    local name=$1 dir=$2 kind=$3 cert=$4 key=$5 ext
    mkdir -p "$dir/CA" "$dir/libvirt/private"
    cp "$pki/cacert.pem" "$dir/CA/cacert.pem"
    if [ "$kind" = server ]; then
        ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$name"
    else
        ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    fi
    printf '%s\n' "$ext" >"$work/$name.ext"
    openssl_quiet req -newkey rsa:2048 -nodes -subj "/O=qemud test/CN=$name" \
        -keyout "$dir/libvirt/private/$key" -out "$work/$name.csr"
    openssl_quiet x509 -req -in "$work/$name.csr" -CA "$pki/cacert.pem" -CAkey "$pki/cakey.pem" \
        -CAcreateserial -days 2 -extfile "$work/$name.ext" -out "$dir/libvirt/$cert"
    chmod 600 "$dir/libvirt/private/$key"
}
issue host1 "$pki/host1" server servercert.pem serverkey.pem
issue host2 "$pki/host2" server servercert.pem serverkey.pem
issue client "$pki/client" client clientcert.pem clientkey.pem

say "starting two hosts and a client"
export QEMUD_IMAGE="$image" QEMUD_PKI="$pki"
docker-compose -p "$project" -f docker/compose.yml up -d >/dev/null 2>&1
touch "$work/compose-up"
for h in host1 host2; do
    ok=""
    for _ in $(seq 60); do
        if docker-compose -p "$project" -f docker/compose.yml exec -T "$h" \
            qemuctl -c 'qemu+unix:///system?socket=/run/libvirt/libvirt-sock' version >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.5
    done
    if [ -z "$ok" ]; then
        docker-compose -p "$project" -f docker/compose.yml logs "$h" | tail -n 20
        say "FAILED: $h did not come up"
        exit 1
    fi
done

say "running the client scenario"
if ! docker-compose -p "$project" -f docker/compose.yml exec -T client sh /scenario.sh; then
    docker-compose -p "$project" -f docker/compose.yml logs host1 host2 | tail -n 40
    say "FAILED: client scenario"
    exit 1
fi

say "installing the package in a clean container"
docker run -d --name "$project-deb" --network none -v "$root/$deb:/tmp/qemud.deb:ro" \
    "$base" sleep infinity >/dev/null
# Its dependencies are in the base already, so apt needs no network.
docker exec "$project-deb" sh -c 'DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends /tmp/qemud.deb >/dev/null'
# No systemd in the container: run what the unit's ExecStart runs.
exec_start=$(docker exec "$project-deb" sh -c "sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/qemud.service")
docker exec -d "$project-deb" sh -c "$exec_start"
ok=""
for _ in $(seq 60); do
    if docker exec "$project-deb" virsh -c qemu:///system version >"$work/version.txt" 2>&1; then
        ok=1
        break
    fi
    sleep 0.5
done
if [ -z "$ok" ]; then
    cat "$work/version.txt"
    say "FAILED: virsh -c qemu:///system version in the package container"
    exit 1
fi
docker exec "$project-deb" sh -c 'test -s /usr/share/man/man1/qemud.1.gz && test -s /usr/share/bash-completion/completions/qemud'
say "package: $(head -n 1 "$work/version.txt")"
say "1 passed, 0 failed"
