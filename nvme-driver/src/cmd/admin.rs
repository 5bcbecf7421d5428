//! Admin command encoding.

use crate::spec::{Sqe, admin_opcode as op, cns, feature};

/// Identify with the given CNS for namespace `nsid` (4096 bytes of data).
pub fn identify(cns: u32, nsid: u32) -> Sqe {
    let mut c = Sqe::new(op::IDENTIFY, nsid);
    c.cdw10 = cns;
    c
}

/// Identify Controller.
pub fn identify_controller() -> Sqe {
    identify(cns::CONTROLLER, 0)
}

/// Identify Namespace `nsid`.
pub fn identify_namespace(nsid: u32) -> Sqe {
    identify(cns::NAMESPACE, nsid)
}

/// Namespace Identification Descriptor list of namespace `nsid`.
pub fn identify_ns_descriptors(nsid: u32) -> Sqe {
    identify(cns::NS_ID_DESCRIPTORS, nsid)
}

/// Active Namespace ID list of NSIDs greater than `after`.
pub fn active_namespaces(after: u32) -> Sqe {
    identify(cns::ACTIVE_NS_LIST, after)
}

/// Set Features.
pub fn set_features(fid: u8, cdw11: u32) -> Sqe {
    let mut c = Sqe::new(op::SET_FEATURES, 0);
    c.cdw10 = fid as u32;
    c.cdw11 = cdw11;
    c
}

/// Get Features (current value).
pub fn get_features(fid: u8, nsid: u32) -> Sqe {
    let mut c = Sqe::new(op::GET_FEATURES, nsid);
    c.cdw10 = fid as u32;
    c
}

/// Set Features, Number of Queues: asks for `sq` submission and `cq`
/// completion queues (1-based counts).
pub fn set_num_queues(sq: u16, cq: u16) -> Sqe {
    let n = |v: u16| v.saturating_sub(1) as u32;
    set_features(feature::NUMBER_OF_QUEUES, n(cq) << 16 | n(sq))
}

/// Create I/O Completion Queue `qid` of `entries` slots at `iova`,
/// physically contiguous, interrupts disabled (poll mode).
pub fn create_io_cq(qid: u16, entries: u16, iova: u64) -> Sqe {
    let mut c = Sqe::new(op::CREATE_IO_CQ, 0);
    c.prp1 = iova;
    c.cdw10 = ((entries as u32 - 1) << 16) | qid as u32;
    c.cdw11 = 1; // PC=1, IEN=0
    c
}

/// Create I/O Submission Queue `qid` of `entries` slots at `iova`, bound to
/// completion queue `cqid`, physically contiguous.
pub fn create_io_sq(qid: u16, entries: u16, iova: u64, cqid: u16) -> Sqe {
    let mut c = Sqe::new(op::CREATE_IO_SQ, 0);
    c.prp1 = iova;
    c.cdw10 = ((entries as u32 - 1) << 16) | qid as u32;
    c.cdw11 = (cqid as u32) << 16 | 1; // PC=1, medium priority (ignored by RR)
    c
}

/// Delete I/O Submission Queue `qid`.
pub fn delete_io_sq(qid: u16) -> Sqe {
    let mut c = Sqe::new(op::DELETE_IO_SQ, 0);
    c.cdw10 = qid as u32;
    c
}

/// Delete I/O Completion Queue `qid`.
pub fn delete_io_cq(qid: u16) -> Sqe {
    let mut c = Sqe::new(op::DELETE_IO_CQ, 0);
    c.cdw10 = qid as u32;
    c
}

/// Get Log Page `lid` for `nsid`: `bytes` (a multiple of 4) from `offset`.
pub fn get_log_page(lid: u8, nsid: u32, bytes: usize, offset: u64) -> Sqe {
    let mut c = Sqe::new(op::GET_LOG_PAGE, nsid);
    let numd = (bytes / 4).saturating_sub(1) as u32;
    c.cdw10 = (numd & 0xffff) << 16 | lid as u32;
    c.cdw11 = numd >> 16;
    c.cdw12 = offset as u32;
    c.cdw13 = (offset >> 32) as u32;
    c
}

/// Abort command `cid` on submission queue `sqid`.
pub fn abort(sqid: u16, cid: u16) -> Sqe {
    let mut c = Sqe::new(op::ABORT, 0);
    c.cdw10 = (cid as u32) << 16 | sqid as u32;
    c
}

/// Asynchronous Event Request.
pub fn async_event_request() -> Sqe {
    Sqe::new(op::ASYNC_EVENT_REQUEST, 0)
}

/// Asynchronous Event Configuration: SMART critical warnings (all) and
/// Namespace Attribute Notices.
pub fn configure_async_events() -> Sqe {
    set_features(feature::ASYNC_EVENT_CONFIG, 0xff | 1 << 8)
}

/// Format NVM of namespace `nsid` (0xffffffff for all) with LBA format
/// `lbaf`, no secure erase, no protection information.
pub fn format_nvm(nsid: u32, lbaf: u8) -> Sqe {
    let mut c = Sqe::new(op::FORMAT_NVM, nsid);
    c.cdw10 = (lbaf & 0x0f) as u32 | (((lbaf >> 4) & 3) as u32) << 12;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_creation_encoding() {
        let c = create_io_cq(3, 1024, 0x1_0000_0000);
        assert_eq!(c.opcode(), 0x05);
        assert_eq!(c.cdw10, 1023 << 16 | 3);
        assert_eq!(c.cdw11, 1);
        assert_eq!(c.prp1, 0x1_0000_0000);
        let s = create_io_sq(3, 1024, 0x1_0001_0000, 3);
        assert_eq!(s.opcode(), 0x01);
        assert_eq!(s.cdw11, 3 << 16 | 1);
        assert_eq!(delete_io_sq(3).cdw10, 3);
    }

    #[test]
    fn log_page_and_features_encoding() {
        let c = get_log_page(0x02, 0xffff_ffff, 512, 0);
        assert_eq!(c.cdw10, 127 << 16 | 2);
        assert_eq!(c.cdw11, 0);
        // NUMD above 16 bits splits into NUMDU.
        let c = get_log_page(0x01, 0, 4 << 18, 0x1_0000_0004);
        assert_eq!(c.cdw10 >> 16, ((1u32 << 18) - 1) & 0xffff);
        assert_eq!(c.cdw11, ((1u32 << 18) - 1) >> 16);
        assert_eq!((c.cdw12, c.cdw13), (4, 1));
        assert_eq!(set_num_queues(8, 8).cdw11, 7 << 16 | 7);
        assert_eq!(abort(2, 17).cdw10, 17 << 16 | 2);
        assert_eq!(identify_namespace(5).nsid, 5);
        assert_eq!(identify_controller().cdw10, 1);
        assert_eq!(format_nvm(1, 0x13).cdw10, 3 | 1 << 12);
    }
}
