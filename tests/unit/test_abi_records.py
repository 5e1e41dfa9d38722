"""Behaviour of the memory, event channel, grant table, xen.h, x86 and elfnote declarations through the
layout framework: build/parse round trips, byte strings, unions, constants in the catalogue.

Offsets are never typed here: the conformance tier checks them against gcc. Where a test needs to look
at raw bytes it asks the layout for the offset.
"""

from __future__ import annotations

import struct

import pytest

from xenpure.errors import ProtocolError
from xenpure.hypercall import _layout
from xenpure.hypercall.abi import (
    RELEASES,
    Release,
    arch_x86,
    catalogue,
    elfnote,
    event_channel,
    grant_table,
    layouts,
    memory,
    xen,
)

NEW_MODULES = (memory, event_channel, grant_table, elfnote)


def _le(n: int, value: int) -> bytes:
    return value.to_bytes(n, "little")


# --- every record ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", RELEASES, ids=lambda r: r.name)
def test_every_record_builds_zeroes_and_parses_back(rel: Release) -> None:
    for lay in layouts(rel.iface):
        raw = lay.build()
        assert raw == bytes(lay.size), lay.cname
        assert lay.build(lay.parse(raw)) == raw, lay.cname


def test_untagged_inner_structs_are_not_catalogued_records() -> None:
    names = {r["cname"] for r in catalogue("4.17")["records"]}
    assert "struct evtchn_status" in names
    assert "struct start_info" in names
    assert "struct gnttab_copy_ptr" in names  # C gives this one a tag
    for untagged in ("evtchn_status_unbound", "start_info_console_domU", "vcpu_guest_context_fpu_ctxt"):
        assert f"struct {untagged}" not in names


def test_members_paths_are_unique_per_record() -> None:
    for rec in catalogue("4.17")["records"]:
        paths = [m["path"] for m in rec["members"]]
        assert len(paths) == len(set(paths)), rec["cname"]


def test_short_buffer_is_a_protocol_error() -> None:
    lay = event_channel.BIND_VIRQ.layout()
    with pytest.raises(ProtocolError):
        lay.parse(bytes(lay.size - 1))


# --- start_info --------------------------------------------------------------------------------------------


def test_start_info_magic_and_cmdline_round_trip() -> None:
    lay = xen.START_INFO.layout()
    raw = lay.build(
        magic=b"xen-3.0-x86_64",
        nr_pages=0x40000,
        flags=xen.StartInfoFlag.MOD_START_PFN,
        store_mfn=0x1234,
        store_evtchn=1,
        cmd_line=b"console=hvc0 root=/dev/xvda1",
        first_p2m_pfn=0x400,
    )
    assert len(raw) == lay.size
    off = lay.offsetof("magic")
    assert raw[off : off + len(b"xen-3.0-x86_64") + 1] == b"xen-3.0-x86_64\0"
    s = lay.parse(raw)
    assert s.magic.rstrip(b"\0") == b"xen-3.0-x86_64"
    assert isinstance(s.cmd_line, bytes)  # int8_t[] decodes as text bytes
    assert len(s.cmd_line) == xen.MAX_GUEST_CMDLINE
    assert s.cmd_line.rstrip(b"\0") == b"console=hvc0 root=/dev/xvda1"
    assert s.nr_pages == 0x40000
    assert xen.StartInfoFlag(s.flags) is xen.StartInfoFlag.MOD_START_PFN
    assert (s.store_mfn, s.store_evtchn, s.first_p2m_pfn) == (0x1234, 1, 0x400)


def test_start_info_cmdline_too_long_is_refused() -> None:
    with pytest.raises(ValueError):
        xen.START_INFO.layout().build(cmd_line=b"x" * (xen.MAX_GUEST_CMDLINE + 1))


def test_start_info_console_union_members_share_bytes() -> None:
    lay = xen.START_INFO.layout()
    raw = lay.build(console={"domU": {"mfn": 0xABCDE, "evtchn": 2}})
    s = lay.parse(raw)
    assert (s.console.domU.mfn, s.console.domU.evtchn) == (0xABCDE, 2)
    # dom0's view is the same bytes: info_off/info_size alias the low/high halves of domU.mfn.
    assert (s.console.dom0.info_off, s.console.dom0.info_size) == (0xABCDE, 0)
    console = lay.offsetof("console")
    assert lay.offsetof("console.dom0.info_off") == lay.offsetof("console.domU.mfn") == console

    raw0 = lay.build(console={"dom0": {"info_off": 0x800, "info_size": 0x40}})
    s0 = lay.parse(raw0)
    assert (s0.console.dom0.info_off, s0.console.dom0.info_size) == (0x800, 0x40)
    assert s0.console.domU.mfn == 0x800 | 0x40 << 32


def test_parsed_union_rebuilds_and_takes_one_changed_view() -> None:
    lay = xen.START_INFO.layout()
    raw = lay.build(console={"domU": {"mfn": 0x77, "evtchn": 2}}, magic=b"xen-3.0-x86_64")
    s = lay.parse(raw)
    assert lay.build(s) == raw
    s.console.domU.mfn = 0x99  # read-modify-write through one view
    assert lay.parse(lay.build(s)).console.domU == {"mfn": 0x99, "evtchn": 2}
    s.console.dom0.info_size = 1  # a second, conflicting view
    with pytest.raises(ValueError):
        lay.build(s)


def test_union_takes_one_member() -> None:
    with pytest.raises(ValueError):
        xen.START_INFO.layout().build(console={"domU": {}, "dom0": {}})


# --- shared info ------------------------------------------------------------------------------------------


def test_shared_info_vcpu_slots_and_event_bitmaps() -> None:
    lay = xen.SHARED_INFO.layout()
    raw = lay.build(
        vcpu_info=[{}, {"evtchn_upcall_pending": 1, "evtchn_pending_sel": 1 << 3, "time": {"version": 2}}],
        evtchn_pending=[0, 1 << 5],
        wc_sec=1_700_000_000,
        arch={"max_pfn": 0x40000, "p2m_generation": 4},
    )
    s = lay.parse(raw)
    assert len(s.vcpu_info) == arch_x86.XEN_LEGACY_MAX_VCPUS
    assert s.vcpu_info[0].evtchn_upcall_pending == 0
    assert s.vcpu_info[1].evtchn_upcall_pending == 1
    assert s.vcpu_info[1].evtchn_pending_sel == 1 << 3
    assert s.vcpu_info[1].time.version == 2
    assert s.evtchn_pending[1] == 1 << 5
    assert sum(s.evtchn_mask) == 0
    assert s.wc_sec == 1_700_000_000
    assert (s.arch.max_pfn, s.arch.p2m_generation) == (0x40000, 4)
    # Every vcpu_info slot is exactly one vcpu_info: slot n starts at n * sizeof(vcpu_info).
    vi = xen.VCPU_INFO.layout()
    slot1 = raw[lay.offsetof("vcpu_info") + vi.size : lay.offsetof("vcpu_info") + 2 * vi.size]
    assert vi.parse(slot1).evtchn_pending_sel == 1 << 3


def test_vcpu_time_info_signed_shift() -> None:
    lay = xen.VCPU_TIME_INFO.layout()
    s = lay.parse(lay.build(tsc_shift=-1, flags=xen.PvClockFlag.TSC_STABLE_BIT, tsc_to_system_mul=0x80000000))
    assert s.tsc_shift == -1
    assert s.flags == xen.PvClockFlag.TSC_STABLE_BIT
    assert s.tsc_to_system_mul == 0x80000000


# --- PV memory management ---------------------------------------------------------------------------------


def test_mmuext_op_pin_and_flush_multi() -> None:
    lay = xen.MMUEXT_OP.layout()
    pin = lay.parse(lay.build(cmd=xen.MmuExtCmd.PIN_L4_TABLE, arg1={"mfn": 0x1F00}))
    assert pin.cmd == xen.MmuExtCmd.PIN_L4_TABLE
    assert pin.arg1.mfn == pin.arg1.linear_addr == 0x1F00
    flush = lay.parse(lay.build(cmd=xen.MmuExtCmd.TLB_FLUSH_MULTI, arg2={"vcpumask": 0x7FFF0000}))
    assert flush.arg2.vcpumask == flush.arg2.src_mfn == 0x7FFF0000
    assert flush.arg2.nr_ents == 0x7FFF0000  # low 32 bits of the same union


def test_mmu_update_array_packs_back_to_back() -> None:
    lay = xen.MMU_UPDATE.layout()
    reqs = [(0x1000 | xen.MmuUpdate.MACHPHYS_UPDATE, 7), (0x2008 | xen.MmuUpdate.NORMAL_PT_UPDATE, 0x3067)]
    buf = b"".join(lay.build(ptr=p, val=v) for p, v in reqs)
    assert len(buf) == 2 * lay.size
    back = [lay.parse(buf[i * lay.size :]) for i in range(2)]
    assert [(r.ptr, r.val) for r in back] == reqs
    assert back[0].ptr & 3 == xen.MmuUpdate.MACHPHYS_UPDATE


def test_multicall_entry_args() -> None:
    lay = xen.MULTICALL_ENTRY.layout()
    s = lay.parse(lay.build(op=xen.Hypercall.mmuext_op, args=[1, 2, 3]))
    assert s.op == xen.Hypercall.mmuext_op
    assert list(s.args) == [1, 2, 3, 0, 0, 0]


# --- x86 vcpu context -------------------------------------------------------------------------------------


def test_vcpu_guest_context_round_trip() -> None:
    lay = arch_x86.VCPU_GUEST_CONTEXT.layout()
    fpu = bytes(range(256)) * 2
    values = {
        "fpu_ctxt": {"x": fpu},
        "flags": arch_x86.Vgcf.in_kernel | arch_x86.Vgcf.online,
        "user_regs": {
            "rip": 0xFFFFFFFF81000000,
            "rsp": 0xFFFFFFFF82000000,
            "rsi": 0xFFFFFFFF80800000,
            "rflags": 1 << 9,
            "cs": arch_x86.FlatSelector.KERNEL_CS,
            "ss": arch_x86.FlatSelector.KERNEL_SS,
        },
        "trap_ctxt": [{"vector": 0, "cs": arch_x86.FlatSelector.KERNEL_CS, "address": 0xFFFF1234}],
        "ctrlreg": [0, 0, 0, 0x1234000],
        "kernel_ss": arch_x86.FlatSelector.KERNEL_SS,
        "vm_assist": 1 << xen.VmAssistType.writable_pagetables,
        "gs_base_kernel": 0xFFFF888000000000,
    }
    raw = lay.build(values)
    assert len(raw) == lay.size
    s = lay.parse(raw)
    assert s.fpu_ctxt.x == fpu
    assert arch_x86.Vgcf(s.flags) == arch_x86.Vgcf.in_kernel | arch_x86.Vgcf.online
    assert s.user_regs.rip == 0xFFFFFFFF81000000
    assert s.user_regs.rsi == 0xFFFFFFFF80800000
    assert s.user_regs.cs == arch_x86.FlatSelector.KERNEL_CS
    assert len(s.trap_ctxt) == 256
    assert s.trap_ctxt[0].address == 0xFFFF1234
    assert s.trap_ctxt[1].address == 0
    assert s.ctrlreg[3] == 0x1234000
    assert s.gs_base_kernel == 0xFFFF888000000000
    assert lay.build(s) == raw
    # user_regs is a cpu_user_regs placed inside the context.
    regs = arch_x86.CPU_USER_REGS.layout()
    inner = raw[lay.offsetof("user_regs") : lay.offsetof("user_regs") + regs.size]
    assert regs.parse(inner).rsp == 0xFFFFFFFF82000000
    # The 64-bit register really is 8 bytes wide in the image.
    off = lay.offsetof("user_regs.rip")
    assert struct.unpack_from("<Q", raw, off)[0] == 0xFFFFFFFF81000000


# --- event channels ---------------------------------------------------------------------------------------


def test_evtchn_status_union_views() -> None:
    lay = event_channel.STATUS.layout()
    raw = lay.build(
        dom=xen.DomId.SELF,
        port=5,
        status=event_channel.EvtchnStat.interdomain,
        vcpu=1,
        u={"interdomain": {"dom": 3, "port": 7}},
    )
    s = lay.parse(raw)
    assert s.status == event_channel.EvtchnStat.interdomain
    assert (s.u.interdomain.dom, s.u.interdomain.port) == (3, 7)
    assert s.u.unbound.dom == 3  # first member of both inner structs
    virq = lay.parse(lay.build(status=event_channel.EvtchnStat.virq, u={"virq": event_channel.Virq.DOM_EXC}))
    assert virq.u.virq == virq.u.pirq == event_channel.Virq.DOM_EXC


@pytest.mark.parametrize(
    ("decl", "values"),
    [
        (event_channel.ALLOC_UNBOUND, {"dom": xen.DomId.SELF, "remote_dom": 1, "port": 9}),
        (event_channel.BIND_INTERDOMAIN, {"remote_dom": 2, "remote_port": 3, "local_port": 4}),
        (event_channel.BIND_VIRQ, {"virq": event_channel.Virq.DOM_EXC, "vcpu": 0, "port": 11}),
        (event_channel.BIND_IPI, {"vcpu": 3, "port": 12}),
        (event_channel.CLOSE, {"port": 12}),
        (event_channel.SEND, {"port": 13}),
        (event_channel.BIND_VCPU, {"port": 13, "vcpu": 2}),
        (event_channel.UNMASK, {"port": 14}),
        (event_channel.RESET, {"dom": 7}),
        (event_channel.INIT_CONTROL, {"control_gfn": 0x99, "offset": 0x40, "vcpu": 1, "link_bits": 17}),
    ],
    ids=lambda v: getattr(v, "cname", ""),
)
def test_evtchn_records_round_trip(decl: _layout.Decl, values: dict[str, int]) -> None:
    lay = decl.layout()
    s = lay.parse(lay.build(values))
    assert {k: s[k] for k in values} == values


# --- grant tables -----------------------------------------------------------------------------------------


def test_grant_entry_v1_table_page() -> None:
    lay = grant_table.GRANT_ENTRY_V1.layout()
    flags = grant_table.GrantType.permit_access | grant_table.GrantFlag.readonly
    page = bytearray(4096)
    ref = grant_table.GnttabReserved.XENSTORE
    page[ref * lay.size : (ref + 1) * lay.size] = lay.build(flags=flags, domid=0, frame=0xFEFFF)
    e = lay.parse(page[ref * lay.size :])
    assert e.flags & grant_table.GrantFlag.type_mask == grant_table.GrantType.permit_access
    assert e.flags & grant_table.GrantFlag.readonly
    assert e.frame == 0xFEFFF
    hdr = grant_table.GRANT_ENTRY_HEADER.layout().parse(page[ref * lay.size :])
    assert (hdr.flags, hdr.domid) == (e.flags, e.domid)


def test_map_grant_ref_negative_status() -> None:
    lay = grant_table.MAP_GRANT_REF.layout()
    raw = lay.build(
        host_addr=0x7F0000000000,
        flags=grant_table.GntMap.host_map | grant_table.GntMap.readonly,
        ref=8,
        dom=3,
        status=grant_table.GntSt.bad_gntref,
    )
    s = lay.parse(raw)
    assert s.status == grant_table.GntSt.bad_gntref < 0
    assert grant_table.GntSt(s.status) is grant_table.GntSt.bad_gntref
    assert grant_table.GntMap(s.flags) == grant_table.GntMap.host_map | grant_table.GntMap.readonly


def test_gnttab_copy_source_gref_dest_gmfn() -> None:
    lay = grant_table.COPY.layout()
    raw = lay.build(
        source={"u": {"ref": 42}, "domid": 5, "offset": 128},
        dest={"u": {"gmfn": 0x123456789}, "domid": xen.DomId.SELF, "offset": 0},
        len=512,
        flags=grant_table.CopyFlag.source_gref,
    )
    s = lay.parse(raw)
    assert (s.source.u.ref, s.source.domid, s.source.offset) == (42, 5, 128)
    assert s.dest.u.gmfn == 0x123456789
    assert s.dest.u.ref == 0x23456789  # the union's 32-bit view of the same bytes
    assert s.dest.domid == xen.DomId.SELF
    assert (s.len, s.flags, s.status) == (512, grant_table.CopyFlag.source_gref, 0)
    ptr = grant_table.COPY_PTR.layout()
    assert ptr.parse(raw[lay.offsetof("dest") :]).u.gmfn == 0x123456789


def test_gnttab_query_and_versions() -> None:
    q = grant_table.QUERY_SIZE.layout()
    s = q.parse(q.build(dom=1, nr_frames=4, max_nr_frames=64, status=grant_table.GntSt.okay))
    assert (s.dom, s.nr_frames, s.max_nr_frames, s.status) == (1, 4, 64, 0)
    g = grant_table.GET_VERSION.layout()
    assert g.parse(g.build(dom=1, version=2)).version == 2
    st = grant_table.SETUP_TABLE.layout()
    s2 = st.parse(st.build(dom=2, nr_frames=1, status=grant_table.GntSt.permission_denied, frame_list=0x1000))
    assert (s2.status, s2.frame_list) == (grant_table.GntSt.permission_denied, 0x1000)


# --- memory_op ----------------------------------------------------------------------------------------------


def test_memory_reservation_populate_physmap() -> None:
    lay = memory.MEMORY_RESERVATION.layout()
    s = lay.parse(lay.build(extent_start=0x7F00DEAD0000, nr_extents=512, extent_order=9, domid=4))
    assert (s.extent_start, s.nr_extents, s.extent_order, s.mem_flags, s.domid) == (
        0x7F00DEAD0000,
        512,
        9,
        0,
        4,
    )


def test_memory_exchange_in_out_keyword_member() -> None:
    lay = memory.MEMORY_EXCHANGE.layout()
    raw = lay.build(
        {"in": {"nr_extents": 2, "domid": 1}, "out": {"nr_extents": 1, "extent_order": 1, "domid": 1}}
    )
    s = lay.parse(raw)
    assert s["in"].nr_extents == 2
    assert s.out.extent_order == 1
    assert s.nr_exchanged == 0
    res = memory.MEMORY_RESERVATION.layout()
    assert res.parse(raw[lay.offsetof("out") :]).nr_extents == 1


def test_add_to_physmap_grant_status_frame() -> None:
    lay = memory.ADD_TO_PHYSMAP.layout()
    idx = memory.MapIdx.grant_table_status | 2
    s = lay.parse(lay.build(domid=xen.DomId.SELF, space=memory.MapSpace.grant_table, idx=idx, gpfn=0xF0000))
    assert memory.MapSpace(s.space) is memory.MapSpace.grant_table
    assert s.idx & memory.MapIdx.grant_table_status
    assert s.idx & ~memory.MapIdx.grant_table_status == 2


def test_add_to_physmap_batch_foreign_domid() -> None:
    lay = memory.ADD_TO_PHYSMAP_BATCH.layout()
    s = lay.parse(lay.build(space=memory.MapSpace.gmfn_foreign, size=3, u={"foreign_domid": 9}, errs=0x5000))
    assert s.u.foreign_domid == s.u.res0 == 9
    assert (s.size, s.errs) == (3, 0x5000)


def test_acquire_resource_size_query() -> None:
    lay = memory.MEM_ACQUIRE_RESOURCE.layout()
    raw = lay.build(domid=3, type=memory.ResourceType.grant_table, id=memory.ResourceGrantTableId.status)
    s = lay.parse(raw)
    assert (s.nr_frames, s.frame_list, s.pad) == (0, 0, 0)
    assert memory.ResourceType(s.type) is memory.ResourceType.grant_table
    assert s.id == memory.ResourceGrantTableId.status
    # Xen writes the size back into nr_frames.
    off = lay.offsetof("nr_frames")
    answered = raw[:off] + _le(4, 32) + raw[off + 4 :]
    assert lay.parse(answered).nr_frames == 32


# --- constants --------------------------------------------------------------------------------------------


def test_constant_groups_are_catalogued_with_their_macro_names() -> None:
    consts = catalogue("4.17")["constants"]
    expect: dict[str, int] = {
        "XENMEM_populate_physmap": memory.MemOp.populate_physmap,
        "XENMEM_acquire_resource": memory.MemOp.acquire_resource,
        "XENMAPSPACE_gmfn_foreign": memory.MapSpace.gmfn_foreign,
        "XENMEM_resource_grant_table_id_status": memory.ResourceGrantTableId.status,
        "EVTCHNOP_bind_interdomain": event_channel.EvtchnOp.bind_interdomain,
        "EVTCHNSTAT_ipi": event_channel.EvtchnStat.ipi,
        "VIRQ_DOM_EXC": event_channel.Virq.DOM_EXC,
        "NR_VIRQS": event_channel.NrVirqs.NR_VIRQS,
        "GNTTABOP_copy": grant_table.GnttabOp.copy,
        "GNTST_no_space": grant_table.GntSt.no_space,
        "GNTTAB_RESERVED_XENSTORE": grant_table.GnttabReserved.XENSTORE,
        "GNTMAP_guest_avail_mask": grant_table.GntMap.guest_avail_mask,
        "SIF_PM_MASK": xen.StartInfoFlag.PM_MASK,
        "MAX_GUEST_CMDLINE": xen.MAX_GUEST_CMDLINE,
        "MMUEXT_PIN_L4_TABLE": xen.MmuExtCmd.PIN_L4_TABLE,
        "XEN_LEGACY_MAX_VCPUS": arch_x86.XEN_LEGACY_MAX_VCPUS,
        "XEN_ELFNOTE_PHYS32_ENTRY": elfnote.ElfNote.PHYS32_ENTRY,
        "XEN_ELFNOTE_DUMPCORE_HEADER": elfnote.ElfNoteCore.DUMPCORE_HEADER,
    }
    for macro, value in expect.items():
        assert consts[macro]["value"] == int(value), macro
    assert consts["GNTST_no_space"]["value"] < 0
    assert consts["VIRQ_DOM_EXC"]["header"] == "xen.h"
    assert consts["EVTCHNOP_send"]["header"] == "event_channel.h"


def test_aliases_zero_and_multibit_flags_are_catalogued() -> None:
    consts = catalogue("4.17")["constants"]
    # Aliases: iterating an enum skips them, the catalogue must not.
    assert consts["DOMID_SELF"]["value"] == consts["DOMID_FIRST_RESERVED"]["value"]
    assert consts["GTF_transfer_committed"]["value"] == consts["GTF_readonly"]["value"]
    assert consts["VGCF_IN_KERNEL"]["value"] == consts["VGCF_in_kernel"]["value"]
    assert consts["FLAT_KERNEL_CS"]["value"] == consts["FLAT_KERNEL_CS64"]["value"]
    # Zero and multi-bit members of flag groups.
    assert consts["GTF_invalid"]["value"] == 0
    assert consts["GTF_type_mask"]["value"] == int(grant_table.GrantFlag.type_mask)
    # Names that are not Python identifiers.
    assert consts["VMASST_TYPE_4gb_segments"]["value"] == xen.VmAssistType._4gb_segments
    assert "VMASST_TYPE__4gb_segments" not in consts
    assert "SCHEDOP_yield" in consts


def test_every_constant_group_of_the_new_modules_is_registered() -> None:
    registered = {g.enum for g in _layout.constants_registry()}
    for mod in NEW_MODULES:
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, int):
                assert obj in registered, f"{mod.__name__}.{name}"


def test_elfnote_is_constants_only() -> None:
    assert not [d for d in _layout.declarations().values() if d.header == "elfnote.h"]
    assert [int(n) for n in elfnote.ElfNote] == list(range(len(elfnote.ElfNote)))
