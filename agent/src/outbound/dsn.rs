//! Delivery status notifications (RFC 3464): a `multipart/report` message telling the
//! sender which recipients of a queued message failed, and why.

use tern_mail::{QueuedMessage, RecipientState};

/// How much of the original message the notification quotes (its header and the start of
/// its body).
const QUOTED_BYTES: usize = 16 * 1024;

/// The notification for `message`'s failed recipients, `body` being the original message;
/// `None` when no recipient failed. `reporting` is the reporting host's name; `now` and the
/// boundary come from the caller so the text is reproducible.
pub fn bounce(
    message: &QueuedMessage,
    body: &[u8],
    reporting: &str,
    now: jiff::Timestamp,
) -> Option<Vec<u8>> {
    let failed: Vec<_> = message
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Failed)
        .collect();
    if failed.is_empty() {
        return None;
    }
    let boundary = format!("tern-dsn-{}-{}", message.id, message.queued_at);
    let date = now.strftime("%a, %d %b %Y %H:%M:%S +0000");
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <dsn-{id}-{queued}@{reporting}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\r\n",
        to = message.account,
        id = message.id,
        queued = message.queued_at,
    ));
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\r\n"
    ));
    for r in &failed {
        out.push_str(&format!(
            "<{}>: {}\r\n",
            r.address,
            r.last_reply.as_deref().unwrap_or("delivery failed")
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; {reporting}\r\n\
         Arrival-Date: {arrival}\r\n",
        arrival = jiff::Timestamp::from_millisecond(message.queued_at)
            .unwrap_or(now)
            .strftime("%a, %d %b %Y %H:%M:%S +0000"),
    ));
    for r in &failed {
        let reply = r.last_reply.as_deref().unwrap_or("");
        let status = status_of(reply);
        out.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: {status}\r\n",
            address = r.address
        ));
        if reply.len() >= 3 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
            out.push_str(&format!(
                "Diagnostic-Code: smtp; {}\r\n",
                reply.replace(['\r', '\n'], " ")
            ));
        }
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let head_end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len().min(QUOTED_BYTES), |p| (p + 2).min(QUOTED_BYTES));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body[..head_end]);
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(bytes)
}

/// The enhanced status code in a reply (`550 5.1.1 …` → `5.1.1`), else `5.0.0`.
fn status_of(reply: &str) -> String {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|s| {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() == 3
                && parts[0] == "5"
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or("5.0.0")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_mail::{BlobHash, QueuedRecipient};

    fn queued(states: &[(RecipientState, &str)]) -> QueuedMessage {
        QueuedMessage {
            id: 7,
            sender: "a@x.test".into(),
            account: "a@x.test".into(),
            recipients: states
                .iter()
                .enumerate()
                .map(|(i, (state, reply))| QueuedRecipient {
                    address: format!("r{i}@remote.test"),
                    state: state.clone(),
                    last_reply: Some((*reply).to_owned()),
                })
                .collect(),
            blob: BlobHash::of(b""),
            size: 0,
            queued_at: 1_700_000_000_000,
            expires_at: 0,
            next_attempt: 0,
            attempts: 1,
            claim: None,
            next_token: 2,
        }
    }

    #[test]
    fn a_bounce_names_each_failed_recipient_with_its_status() {
        let message = queued(&[
            (RecipientState::Delivered, "250 ok"),
            (
                RecipientState::Failed,
                "550 5.1.1 <r1@remote.test>: no such user",
            ),
            (RecipientState::Failed, "given up after 5 days"),
        ]);
        let body = b"Subject: hi\r\nMessage-ID: <m@x.test>\r\n\r\nsecret body\r\n";
        let dsn = bounce(&message, body, "mx.x.test", jiff::Timestamp::UNIX_EPOCH).unwrap();
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("To: <a@x.test>"));
        assert!(text.contains("Final-Recipient: rfc822; r1@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1"));
        assert!(text.contains(
            "Final-Recipient: rfc822; r2@remote.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
        ));
        assert!(!text.contains("r0@remote.test"));
        assert!(text.contains("Message-ID: <m@x.test>"));
        assert!(!text.contains("secret body"), "only the header is quoted");
        assert!(text.ends_with("--\r\n"));
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "CRLF line endings only"
        );
        assert!(
            bounce(
                &queued(&[(RecipientState::Delivered, "250")]),
                body,
                "h",
                jiff::Timestamp::UNIX_EPOCH
            )
            .is_none()
        );
    }
}
