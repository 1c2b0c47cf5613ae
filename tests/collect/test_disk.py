"""disk collector: golden /proc/mounts, /proc/filesystems, /proc/diskstats; statvfs faked per mount."""
import math
import os

import pytest
from collect_helpers import SEC, T0, key, live_settings, samples

from ingress.collect.disk import DiskCollector


def fake_statvfs(table):
    def statvfs(path):
        if path not in table:
            raise FileNotFoundError(path)
        # bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax
        return os.statvfs_result(table[path])
    return statvfs


VFS = {
    "/": (4096, 4096, 1_000_000, 400_000, 350_000, 100_000, 60_000, 55_000, 0, 255),
    "/boot/efi": (512, 512, 1000, 500, 500, 0, 0, 0, 0, 255),
    # "/srv/my data" is absent: a mount that vanished or hangs yields no sample, no error
}
ROOT = dict(mountpoint="/", device="/dev/sda1", fstype="ext4")
EFI = dict(mountpoint="/boot/efi", device="/dev/sdb1", fstype="vfat")


def test_usage_per_mount_excludes_pseudo(tree):
    c = DiskCollector(tree("host-a").settings())
    c.statvfs = fake_statvfs(VFS)
    s = samples(c, c.collect(T0))
    assert s[key("disk.usage.total", **ROOT)] == 1_000_000 * 4096
    assert s[key("disk.usage.used", **ROOT)] == 600_000 * 4096
    assert s[key("disk.usage.free", **ROOT)] == 350_000 * 4096
    assert s[key("disk.usage.utilization", **ROOT)] == pytest.approx(600_000 / 950_000)
    assert s[key("disk.inodes.total", **ROOT)] == 100_000
    assert s[key("disk.inodes.used", **ROOT)] == 40_000
    assert s[key("disk.inodes.free", **ROOT)] == 55_000
    assert s[key("disk.usage.total", **EFI)] == 512_000
    assert key("disk.inodes.total", **EFI) not in s  # vfat has no inodes
    mounts = {dict(k[1])["mountpoint"] for k in s if k[0].startswith("disk.usage")}
    assert mounts == {"/", "/boot/efi"}
    # the escaped mount point was parsed (and interned) even though statvfs failed for it
    assert ("disk.usage.total", (("device", "/dev/sda2"), ("fstype", "xfs"), ("mountpoint", "/srv/my data"))) \
        in c.table.keys


def test_mount_options(tree):
    c = DiskCollector(tree("host-a").settings(fstypes_include=["tmpfs"], mountpoints_exclude=["/boot/*"]))
    c.statvfs = fake_statvfs({**VFS, "/run": (4096, 4096, 10, 10, 10, 5, 5, 5, 0, 255)})
    s = samples(c, c.collect(T0))
    mounts = {dict(k[1])["mountpoint"] for k in s if k[0].startswith("disk.usage")}
    assert mounts == {"/", "/run"}


def test_io_counters_first_pass(tree):
    c = DiskCollector(tree("host-a").settings())
    c.statvfs = fake_statvfs(VFS)
    s = samples(c, c.collect(T0))
    # sda: 1000 reads (100 merged, 80000 sectors, 5000 ms), 2000 writes (300, 160000, 8000 ms),
    # 2 in flight, 6000 ms busy
    assert s[key("disk.io.ops", device="sda", direction="read")] == 1000
    assert s[key("disk.io.ops", device="sda", direction="write")] == 2000
    assert s[key("disk.io.merged", device="sda", direction="write")] == 300
    assert s[key("disk.io.bytes", device="sda", direction="read")] == 80000 * 512
    assert s[key("disk.io.bytes", device="sda", direction="write")] == 160000 * 512
    assert s[key("disk.io.time", device="sda", direction="read")] == 5.0
    assert s[key("disk.io.time", device="sda", direction="write")] == 8.0
    assert s[key("disk.io.busy_time", device="sda")] == 6.0
    assert s[key("disk.io.in_progress", device="sda")] == 2
    assert s[key("disk.io.ops", device="sdb", direction="read")] == 50  # the older 14-field line
    assert not [k for k in s if ("device", "loop0") in k[1]]  # loop* excluded by default
    assert not [k for k in s if k[0].endswith("_rate") or k[0] == "disk.io.utilization"]
    assert s[key("disk.pressure.avg", scope="some", window="10s")] == 4.0
    assert s[key("disk.pressure.stall_time", scope="full")] == 2.0


def test_io_rates_across_device_changes(tree):
    t = tree("host-a")
    c = DiskCollector(t.settings())
    c.statvfs = fake_statvfs(VFS)
    c.collect(T0)
    t.overlay("host-a-later")
    s = samples(c, c.collect(T0 + 5 * SEC))
    # sda over 5 s: +500 reads, +500 writes, +40000 sectors each way, +2500 ms busy
    assert s[key("disk.io.ops_rate", device="sda", direction="read")] == pytest.approx(100.0)
    assert s[key("disk.io.ops_rate", device="sda", direction="write")] == pytest.approx(100.0)
    assert s[key("disk.io.bytes_rate", device="sda", direction="read")] == pytest.approx(40000 * 512 / 5)
    assert s[key("disk.io.bytes_rate", device="sda", direction="write")] == pytest.approx(40000 * 512 / 5)
    assert s[key("disk.io.utilization", device="sda")] == pytest.approx(0.5)
    assert s[key("disk.io.utilization", device="sda1")] == 0.0
    # sdb went away, sdc is new: counters for sdc, but no rate until its second pass
    assert not [k for k in s if ("device", "sdb") in k[1]]
    assert s[key("disk.io.ops", device="sdc", direction="read")] == 7
    assert key("disk.io.ops_rate", device="sdc", direction="read") not in s
    assert s[key("disk.pressure.stall_time", scope="some")] == 9.0


def test_live_host_sanity():
    c = DiskCollector(live_settings())
    c.collect(T0)
    s = samples(c, c.collect(T0 + SEC))
    roots = [k for k in s if k[0] == "disk.usage.total" and ("mountpoint", "/") in k[1]]
    assert roots, "the root filesystem is reported"
    assert not [k for k in s if ("fstype", "proc") in k[1] or ("fstype", "sysfs") in k[1]]
    for (name, tags), v in s.items():
        assert math.isfinite(v) and v >= 0, (name, tags, v)
        if name.endswith("utilization"):
            assert v <= 1
    assert [k for k in s if k[0] == "disk.io.ops"], "at least one block device"
