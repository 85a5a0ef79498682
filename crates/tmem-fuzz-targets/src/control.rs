//! Target `control_request`: the control socket's request decoder (what any process that can
//! connect sends), plus the reply decoder and the CLI's uuid, domain and size parsers.

use tmem_control::{
    decode_reply, decode_request, encode_request, format_uuid, parse_size, parse_uuid, Target,
};

pub fn control_request(data: &[u8]) {
    if let Ok(op) = decode_request(data) {
        // What the daemon understood must be what the CLI would have sent for it.
        let line = encode_request(&op);
        assert_eq!(
            decode_request(&line),
            Ok(op.clone()),
            "{op:?} does not round-trip"
        );
    }
    let _ = decode_reply(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(uuid) = parse_uuid(text) {
            assert_eq!(parse_uuid(&format_uuid(uuid)), Ok(uuid));
        }
        let _ = Target::parse_domain(text);
        // Sizes: never a panic or an overflow, and a plain number is bytes.
        if let Ok(n) = parse_size(text) {
            if let Ok(plain) = text.trim().parse::<u64>() {
                assert_eq!(n, plain);
            }
        }
    }
}
