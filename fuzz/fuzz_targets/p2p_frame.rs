//! Agent-to-agent frames (`p2p::frame::decode`), as an agent reads them
//! from a QUIC stream: a buffer holding any number of frames.
//!
//! Beyond "no panic": every decoded frame took between a header and the
//! whole buffer, any cut-off prefix of it asks for more bytes instead of
//! failing, and it encodes back to a frame that decodes to the same value;
//! binary frames encode back to exactly the bytes they came from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::p2p::frame::{Frame, HEADER_LEN, MAX_ERROR_MESSAGE, decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((frame, used))) = decode(buf) {
        assert!(
            used >= HEADER_LEN && used <= buf.len(),
            "used {used} of {}",
            buf.len()
        );
        for cut in [0, 3, 4, HEADER_LEN, used - 1] {
            if cut < used {
                assert_eq!(decode(&buf[..cut]), Ok(None), "a prefix of {cut} bytes");
            }
        }
        check_round_trip(&frame, &buf[..used]);
        buf = &buf[used..];
    }
});

fn check_round_trip(frame: &Frame, original: &[u8]) {
    let encoded = encode(frame).expect("a decoded frame encodes");
    let (again, used) = decode(&encoded)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is whole");
    assert_eq!(used, encoded.len());
    let truncated = match frame {
        Frame::Error(e) => e.message.len() > MAX_ERROR_MESSAGE,
        Frame::FileAck { message, .. } => message.len() > MAX_ERROR_MESSAGE,
        _ => false,
    };
    if truncated {
        // Long messages are cut on a char boundary when encoded.
        match (frame, &again) {
            (Frame::Error(a), Frame::Error(b)) => {
                assert_eq!(a.code, b.code);
                assert!(a.message.starts_with(&b.message));
            }
            (Frame::FileAck { ok: a, message: m }, Frame::FileAck { ok: b, message: n }) => {
                assert_eq!(a, b);
                assert!(m.starts_with(n.as_str()));
            }
            _ => panic!("{} came back as {}", frame.name(), again.name()),
        }
        return;
    }
    assert_eq!(&again, frame);
    let json = matches!(
        frame,
        Frame::Hello(_) | Frame::Welcome(_) | Frame::FileMeta(_) | Frame::FolderManifest(_)
    );
    if !json && !matches!(frame, Frame::Error(_)) {
        assert_eq!(
            &encoded[..],
            original,
            "{} re-encodes to other bytes",
            frame.name()
        );
    }
}
