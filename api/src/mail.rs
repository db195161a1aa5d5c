//! Mail out of the gateway (password reset tokens), over SMTP with lettre.
//!
//! `smtp.url` names the server the way lettre reads it: `smtps://USER:PASS@HOST:465` (TLS from
//! the first byte), `smtp://USER:PASS@HOST:587?tls=required` (STARTTLS), or `smtp://HOST:25`
//! (plain, for a relay on the same host or network). Certificates are checked against the
//! Web PKI roots.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// A configured SMTP sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    url_shown: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.url_shown)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Mailer {
    /// A sender through `url`, writing as `from` (`Name <addr>` or a bare address).
    pub fn new(url: &str, from: &str) -> Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("smtp.url: {e}"))?
            .timeout(Some(std::time::Duration::from_secs(30)))
            .build();
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("smtp.from {from:?} is not a mail address: {e}"))?;
        // The URL may hold a password: show only where it points.
        let url_shown = url.rsplit('@').next().unwrap_or(url).to_owned();
        Ok(Mailer {
            transport,
            from,
            url_shown,
        })
    }

    pub async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), String> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| format!("{to:?} is not a mail address: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| e.to_string())?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP via {}: {e}", self.url_shown))
    }

    /// The password reset mail.
    pub async fn send_reset(
        &self,
        to: &str,
        token: &str,
        valid_minutes: u64,
    ) -> Result<(), String> {
        let body = format!(
            "Someone (hopefully you) asked to reset the password of the Cairn account {to}.\n\n\
             Your reset token, valid for {valid_minutes} minutes and usable once:\n\n    {token}\n\n\
             Set a new password with it:\n\n    \
             POST /api/auth/reset-password  {{\"token\": \"{token}\", \"new_password\": \"...\"}}\n\n\
             If you did not ask for this, ignore this mail: your password stays as it is.\n"
        );
        self.send(to, "Reset your Cairn password", body).await
    }
}
