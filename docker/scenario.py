"""python3-libvirt against both qemud hosts, over TCP and TLS."""
import libvirt

for host in ("host1", "host2"):
    for uri in (f"qemu+tcp://{host}/system", f"qemu+tls://{host}/system"):
        conn = libvirt.open(uri)
        assert conn.getHostname() == host, conn.getHostname()
        assert conn.getLibVersion() >= 9000000
        assert conn.getType() == "QEMU"
        print(uri, "ok:", conn.getInfo()[0], len(conn.listAllDomains()), "domains")
        conn.close()
