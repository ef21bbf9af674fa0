#!/bin/sh
# Runs in the client container: virsh against both hosts over TCP and TLS,
# a firmware-only guest started and stopped inside each host, then the
# python3-libvirt part.
set -eu
xml=/tmp/fw.xml
cat > $xml <<XML
<domain type='qemu'><name>fw</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><memballoon model='none'/></devices></domain>
XML
for host in host1 host2; do
    for uri in "qemu+tcp://$host/system" "qemu+tls://$host/system"; do
        echo "== $uri"
        virsh -c "$uri" version
        virsh -c "$uri" hostname | grep -qx "$host"
        virsh -c "$uri" list --all
    done
    uri="qemu+tls://$host/system"
    virsh -c "$uri" define $xml
    virsh -c "$uri" start fw
    virsh -c "$uri" domstate fw | grep -qx running
    virsh -c "$uri" destroy fw
    virsh -c "$uri" domstate fw | grep -qx "shut off"
    virsh -c "$uri" undefine fw
done
python3 /scenario.py
echo "scenario passed"
