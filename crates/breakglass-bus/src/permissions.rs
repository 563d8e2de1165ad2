//! Least privilege on the bus: the NATS users and the subjects each may
//! publish and subscribe to, derived from the same [`Subjects`] the code
//! uses, so the server's permissions cannot drift from the code.
//!
//! [`authorization_block`] prints the `authorization { users = [...] }`
//! block of a `nats-server` configuration (`breakglass nats-config`; the
//! K3s manifests ship its output). Each breakglass service connects as its
//! own user (`nats_url: nats://collector:PASSWORD@nats:4222`); replies
//! come to a per-user inbox prefix (`_INBOX_<user>`, see [`inbox_prefix`]),
//! so no user can read the replies another user's requests get.
//!
//! What each user may do (P = prefix, S = the event stream, B = the payload
//! object store, K = the settings key-value bucket):
//! - every service: look up / create S and the stage consumers, follow K;
//! - collector: pull `trigger` (its consumer), publish `snapshot.ready`,
//!   write objects to B;
//! - renderer: pull `snapshot.ready`, publish `workbook.ready`, read and
//!   write B;
//! - uploader: pull `workbook.ready`, read B, publish run outcomes;
//! - scheduler: publish `trigger`, pull every event (run log), write K;
//! - the Mavis core: publish `trigger`, follow `run.finished.>` (run
//!   results) — nothing else: no object store, no settings, no consumers.

use crate::Subjects;
use crate::worker::stage_subjects_for;

/// Who connects to NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The scheduler service (schedule, config API, run log).
    Scheduler,
    /// The collector service.
    Collector,
    /// The renderer service.
    Renderer,
    /// The uploader service.
    Uploader,
    /// The Mavis core: publishes on-demand triggers, follows run results.
    MavisCore,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Role::Scheduler,
        Role::Collector,
        Role::Renderer,
        Role::Uploader,
        Role::MavisCore,
    ];

    /// The default NATS user name of the role.
    pub fn user(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Collector => "collector",
            Role::Renderer => "renderer",
            Role::Uploader => "uploader",
            Role::MavisCore => "mavis",
        }
    }

    /// The environment variable the NATS server reads the password from
    /// (shipped manifests: from the `breakglass-nats-users` Secret).
    pub fn password_env(self) -> String {
        format!(
            "BREAKGLASS_NATS_PASSWORD_{}",
            self.user().to_ascii_uppercase()
        )
    }

    /// The durable consumer the role pulls from, if any.
    fn consumer(self) -> Option<&'static str> {
        match self {
            Role::Scheduler => Some("runlog"),
            Role::Collector => Some("collector"),
            Role::Renderer => Some("renderer"),
            Role::Uploader => Some("uploader"),
            Role::MavisCore => None,
        }
    }
}

/// The reply-inbox prefix of `user`: `_INBOX_<user>`. The bus connects
/// with it, and each user may subscribe to its own inbox only.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// The subjects a user may publish to and subscribe to (everything else is
/// refused by the server).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// `permissions.publish.allow`.
    pub publish: Vec<String>,
    /// `permissions.subscribe.allow`.
    pub subscribe: Vec<String>,
}

/// The permissions of `role`, connecting as `user`, for the installation
/// with these `subjects`.
pub fn permissions(subjects: &Subjects, role: Role, user: &str) -> Permissions {
    let stream = subjects.stream();
    let api = |rest: String| format!("$JS.API.{rest}");
    let payloads = subjects.payload_bucket();
    let object_stream = format!("OBJ_{payloads}");
    let settings = subjects.settings_bucket();
    let kv_stream = format!("KV_{settings}");
    let mut publish = Vec::new();
    let subscribe = vec![format!("{}.>", inbox_prefix(user))];

    if role == Role::MavisCore {
        // Trigger (JetStream publish, acked to its inbox); find the stream
        // and the consumers (what `breakglass trigger` checks on connect).
        publish.push(subjects.trigger());
        publish.push(api(format!("STREAM.INFO.{stream}")));
        publish.push(api(format!("CONSUMER.INFO.{stream}.*")));
        publish.push(api(format!(
            "DIRECT.GET.{stream}.{}",
            subjects.run_finished_all()
        )));
        let mut subscribe = subscribe;
        subscribe.push(subjects.run_finished_all());
        return Permissions { publish, subscribe };
    }

    // Every service: the account, the event stream, the stage consumers
    // (created on connect by whichever service starts first).
    publish.push(api("INFO".into()));
    publish.push(api(format!("STREAM.INFO.{stream}")));
    publish.push(api(format!("STREAM.CREATE.{stream}")));
    for (name, filter) in stage_subjects_for(subjects) {
        publish.push(api(format!("CONSUMER.INFO.{stream}.{name}")));
        publish.push(api(format!("CONSUMER.CREATE.{stream}.{name}.{filter}")));
    }
    // Every service follows the settings saved through the config API.
    publish.push(api(format!("STREAM.INFO.{kv_stream}")));
    publish.push(api(format!("STREAM.CREATE.{kv_stream}")));
    publish.push(api(format!("STREAM.MSG.GET.{kv_stream}")));
    publish.push(api(format!("DIRECT.GET.{kv_stream}")));
    publish.push(api(format!("DIRECT.GET.{kv_stream}.>")));
    publish.push(api(format!("CONSUMER.CREATE.{kv_stream}")));
    publish.push(api(format!("CONSUMER.CREATE.{kv_stream}.>")));
    publish.push(api(format!("CONSUMER.DELETE.{kv_stream}.>")));
    publish.push(format!("$JS.FC.{kv_stream}.>"));

    // Its own consumer: pull, acknowledge; its dead letters; run outcomes.
    if let Some(consumer) = role.consumer() {
        publish.push(api(format!("CONSUMER.MSG.NEXT.{stream}.{consumer}")));
        publish.push(format!("$JS.ACK.{stream}.{consumer}.>"));
        // The newer reply form: `$JS.ACK.<domain>.<account>.<stream>.<consumer>...`.
        publish.push(format!("$JS.ACK.*.*.{stream}.{consumer}.>"));
        publish.push(subjects.dead_letter(consumer));
    }
    if role != Role::Scheduler {
        // A stage reports the run it gives up on (and the uploader the
        // finished ones); run outcomes are read back for status gauges.
        publish.push(subjects.run_finished_all());
    }

    let object_write = [
        api(format!("STREAM.INFO.{object_stream}")),
        api(format!("STREAM.CREATE.{object_stream}")),
        api(format!("STREAM.MSG.GET.{object_stream}")),
        api(format!("DIRECT.GET.{object_stream}")),
        api(format!("DIRECT.GET.{object_stream}.>")),
        api(format!("STREAM.PURGE.{object_stream}")),
        format!("$O.{payloads}.C.>"),
        format!("$O.{payloads}.M.>"),
    ];
    let object_read = [
        api(format!("STREAM.INFO.{object_stream}")),
        api(format!("STREAM.CREATE.{object_stream}")),
        api(format!("STREAM.MSG.GET.{object_stream}")),
        api(format!("DIRECT.GET.{object_stream}")),
        api(format!("DIRECT.GET.{object_stream}.>")),
        api(format!("CONSUMER.CREATE.{object_stream}")),
        api(format!("CONSUMER.CREATE.{object_stream}.>")),
        api(format!("CONSUMER.DELETE.{object_stream}.>")),
        format!("$JS.FC.{object_stream}.>"),
    ];
    let recent_runs = [
        api(format!("STREAM.MSG.GET.{stream}")),
        api(format!("DIRECT.GET.{stream}")),
        api(format!("DIRECT.GET.{stream}.>")),
    ];
    match role {
        Role::Collector => {
            publish.push(subjects.snapshot_ready());
            publish.extend(object_write);
        }
        Role::Renderer => {
            publish.push(subjects.workbook_ready());
            publish.extend(object_write);
            publish.extend(object_read);
        }
        Role::Uploader => {
            publish.extend(object_read);
            publish.extend(recent_runs);
        }
        Role::Scheduler => {
            publish.push(subjects.trigger());
            publish.push(format!("$KV.{settings}.>"));
            publish.extend(recent_runs);
        }
        Role::MavisCore => {}
    }
    let mut seen = std::collections::HashSet::new();
    publish.retain(|subject| seen.insert(subject.clone()));
    Permissions { publish, subscribe }
}

/// How a password appears in the generated configuration.
#[derive(Clone, Debug)]
pub enum Password {
    /// A `$VARIABLE` the server reads from its environment (what the
    /// shipped manifests use, fed from a Secret).
    Env(String),
    /// The password itself (tests; a file you keep secret).
    Literal(breakglass_core::Secret),
}

/// One NATS user of the generated configuration.
#[derive(Clone, Debug)]
pub struct User {
    /// What the user may do.
    pub role: Role,
    /// The user name.
    pub name: String,
    /// Its password.
    pub password: Password,
}

impl User {
    /// The default user of `role` with its password from the environment
    /// variable [`Role::password_env`].
    pub fn from_env(role: Role) -> Self {
        Self {
            role,
            name: role.user().into(),
            password: Password::Env(role.password_env()),
        }
    }
}

fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `authorization { users = [...] }` block of a `nats-server`
/// configuration for the installation with subject prefix `prefix`.
pub fn authorization_block(prefix: &str, users: &[User]) -> String {
    let subjects = Subjects::new(prefix);
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("          {}\n", quoted(s)))
            .collect::<String>()
    };
    let mut out = format!(
        "# Generated by `breakglass nats-config --prefix {prefix}` from the code's subject names.\n\
         authorization {{\n  users = [\n"
    );
    for user in users {
        let permissions = permissions(&subjects, user.role, &user.name);
        let password = match &user.password {
            Password::Env(var) => format!("${var}"),
            Password::Literal(secret) => quoted(secret.expose()),
        };
        out.push_str(&format!(
            "    # {:?}\n    {{\n      user: {}\n      password: {}\n      permissions: {{\n        publish: {{ allow: [\n{}        ] }}\n        subscribe: {{ allow: [\n{}        ] }}\n      }}\n    }}\n",
            user.role,
            quoted(&user.name),
            password,
            list(&permissions.publish),
            list(&permissions.subscribe),
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_publishes_only_what_it_produces() {
        let s = Subjects::new("bg");
        let p = |role| permissions(&s, role, role.user()).publish;
        assert!(p(Role::Collector).contains(&"bg.snapshot.ready".to_string()));
        assert!(!p(Role::Collector).contains(&"bg.workbook.ready".to_string()));
        assert!(!p(Role::Collector).contains(&"bg.trigger".to_string()));
        assert!(p(Role::Renderer).contains(&"bg.workbook.ready".to_string()));
        for event in ["bg.snapshot.ready", "bg.workbook.ready", "bg.trigger"] {
            assert!(!p(Role::Uploader).contains(&event.to_string()), "{event}");
        }
        assert!(p(Role::Scheduler).contains(&"bg.trigger".to_string()));
        assert!(p(Role::Scheduler).contains(&"$KV.bg_settings.>".to_string()));
        assert!(!p(Role::Collector).iter().any(|x| x.starts_with("$KV.")));
        // The collector writes payloads but cannot read them back.
        assert!(
            !p(Role::Collector)
                .iter()
                .any(|x| x.contains("CONSUMER.CREATE.OBJ_"))
        );
        assert_eq!(
            permissions(&s, Role::MavisCore, "mavis"),
            Permissions {
                publish: vec![
                    "bg.trigger".into(),
                    "$JS.API.STREAM.INFO.BG_EVENTS".into(),
                    "$JS.API.CONSUMER.INFO.BG_EVENTS.*".into(),
                    "$JS.API.DIRECT.GET.BG_EVENTS.bg.run.finished.>".into(),
                ],
                subscribe: vec!["_INBOX_mavis.>".into(), "bg.run.finished.>".into()],
            }
        );
    }

    #[test]
    fn the_block_quotes_literals_and_references_variables() {
        let users = [
            User::from_env(Role::Collector),
            User {
                role: Role::Renderer,
                name: "r".into(),
                password: Password::Literal(breakglass_core::Secret::new("p\"w")),
            },
        ];
        let block = authorization_block("bg", &users);
        assert!(
            block.contains("password: $BREAKGLASS_NATS_PASSWORD_COLLECTOR\n"),
            "{block}"
        );
        assert!(block.contains("password: \"p\\\"w\"\n"), "{block}");
        assert!(
            block.contains("subscribe: { allow: [\n          \"_INBOX_r.>\"\n        ] }"),
            "{block}"
        );
    }
}
