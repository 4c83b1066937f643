//! `tidewire envelope`: the signing scheme, offline.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use tidewire_core::envelope::{self, VerifiedView};
use tidewire_core::fields::PathPattern;
use tidewire_core::keys::{Roster, SigningKey};
use tidewire_core::{NodeId, NotificationId, timefmt};

/// `tidewire envelope …`
#[derive(Debug, Subcommand)]
pub enum EnvelopeCmd {
    /// Origin-sign a notification JSON file.
    Seal {
        /// The origin's signing key.
        #[arg(long)]
        key: PathBuf,
        /// The origin node id.
        #[arg(long)]
        node: String,
        /// Notification JSON.
        notification: PathBuf,
        /// Output envelope file.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Withhold fields (the rest still verifies).
    Redact {
        /// Input envelope.
        envelope: PathBuf,
        /// Field path patterns to withhold (`persons[*].name`), repeatable.
        #[arg(long, required = true)]
        withhold: Vec<String>,
        /// Output envelope file.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Verify an envelope against a roster.
    Verify {
        /// The envelope.
        envelope: PathBuf,
        /// The federation roster.
        #[arg(long)]
        roster: PathBuf,
    },
    /// Show an envelope without checking signatures.
    Inspect {
        /// The envelope.
        envelope: PathBuf,
    },
}

/// Runs an envelope command.
pub fn run(cmd: EnvelopeCmd, json: bool) -> Result<()> {
    match cmd {
        EnvelopeCmd::Seal {
            key,
            node,
            notification,
            out,
        } => {
            let node: NodeId = node.parse().map_err(|e| anyhow::anyhow!("--node: {e}"))?;
            let key = SigningKey::load(&key)?;
            let text = std::fs::read_to_string(&notification)
                .with_context(|| format!("cannot read {}", notification.display()))?;
            let n = crate::cmds::parse_notification(&notification.display().to_string(), &text)?;
            let now = timefmt::now_ms();
            let id = NotificationId::generate_at(now);
            let env = envelope::seal(&n, &node, &key, id, 1, now);
            let bytes = envelope::encode(&env);
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id.to_string(), "origin": node.as_str(), "fields": n.fields.len(), "bytes": bytes.len(), "out": out})
                );
            } else {
                println!(
                    "sealed {id} by {node}: {} fields committed, {} bytes -> {}",
                    n.fields.len(),
                    bytes.len(),
                    out.display()
                );
            }
        }
        EnvelopeCmd::Redact {
            envelope: input,
            withhold,
            out,
        } => {
            let mut env = envelope::read_file(&input)?;
            let patterns = withhold
                .iter()
                .map(|p| {
                    p.parse::<PathPattern>()
                        .map_err(|e| anyhow::anyhow!("--withhold: {e}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let removed = envelope::withhold_matching(&mut env, &patterns);
            let bytes = envelope::encode(&env);
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                println!("{}", serde_json::json!({"withheld": removed, "out": out}));
            } else if removed.is_empty() {
                println!(
                    "no disclosed field matched {}; wrote an unchanged copy to {}",
                    withhold.join(", "),
                    out.display()
                );
            } else {
                println!(
                    "withheld {} field(s): {} -> {}",
                    removed.len(),
                    removed.join(", "),
                    out.display()
                );
            }
        }
        EnvelopeCmd::Verify {
            envelope: input,
            roster,
        } => {
            let roster = Roster::load(&roster)?;
            let bytes = std::fs::read(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let (_, view) = envelope::verify_bytes(&bytes, &roster)
                .map_err(|e| anyhow::anyhow!("{}: verification failed: {e}", input.display()))?;
            print_view(&view, json, "verified");
        }
        EnvelopeCmd::Inspect { envelope: input } => {
            let env = envelope::read_file(&input)?;
            let view =
                envelope::inspect(&env).map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
            print_view(
                &view,
                json,
                "not verified: `tidewire envelope verify --roster FILE` checks it",
            );
        }
    }
    Ok(())
}

/// The JSON form of a verified view.
pub fn view_json(v: &VerifiedView) -> serde_json::Value {
    let h = &v.header;
    serde_json::json!({
        "id": h.id.to_string(),
        "origin": h.origin.as_str(),
        "origin_seq": h.origin_seq,
        "created_at": timefmt::format_ms(h.created_at_ms),
        "expires_at": h.expires_at_ms.map(timefmt::format_ms),
        "kind": h.kind.as_str(),
        "case_ref": h.case_ref,
        "routes": h.routes.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "handling": h.handling.code(),
        "handling_restriction": h.handling.restriction(),
        "grading": h.grading.to_string(),
        "audience": h.audience.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "onward_transfer": h.onward_transfer,
        "purposes": h.purposes,
        "signatures_checked": v.signatures_checked,
        "origin_round": v.origin_round.map(|(index, size)| serde_json::json!({"index": index, "size": size})),
        "fields": v.body(),
        "transformed": v.fields.iter().filter_map(|f| f.transformed.as_ref().map(|t| serde_json::json!({"path": f.path, "by": t.by, "rule": t.rule_id, "method": t.method}))).collect::<Vec<_>>(),
        "withheld": v.withheld.iter().map(|w| serde_json::json!({"digest": w.digest, "by": w.by, "rule": w.rule_id})).collect::<Vec<_>>(),
        "custody": v.custody.iter().map(|c| serde_json::json!({"node": c.node, "to": c.to, "at": timefmt::format_ms(c.at_ms), "policy_version": c.policy_version, "withheld": c.withheld, "transformed": c.transformed, "round": c.round.map(|(index, size)| serde_json::json!({"index": index, "size": size}))})).collect::<Vec<_>>(),
        "path": v.path(),
    })
}

fn print_view(v: &VerifiedView, json: bool, state: &str) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view_json(v)).unwrap_or_default()
        );
        return;
    }
    let h = &v.header;
    println!("notification {} ({state})", h.id);
    println!(
        "  origin     {} (seq {}), created {}{}",
        h.origin,
        h.origin_seq,
        timefmt::format_ms(h.created_at_ms),
        v.origin_round
            .map(|(i, n)| format!(", signed in a round ({} of {n})", i + 1))
            .unwrap_or_default()
    );
    println!(
        "  kind       {}   case {}",
        h.kind,
        if h.case_ref.is_empty() {
            "-"
        } else {
            &h.case_ref
        }
    );
    println!(
        "  routes     {}",
        h.routes
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  handling   {}   grading {}", h.handling, h.grading);
    println!(
        "  audience   {}   onward transfer: {}",
        h.audience
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if h.onward_transfer { "allowed" } else { "no" }
    );
    if !h.purposes.is_empty() {
        println!("  purposes   {}", h.purposes.join(", "));
    }
    if let Some(t) = h.expires_at_ms {
        println!("  expires    {}", timefmt::format_ms(t));
    }
    println!(
        "  fields     {} in clear, {} withheld (of {} committed)",
        v.fields.len(),
        v.withheld.len(),
        h.field_count
    );
    for f in &v.fields {
        match &f.transformed {
            Some(t) => println!(
                "    {:<28} {}   [{} by {} under {}]",
                f.path,
                f.value(),
                t.method,
                t.by,
                t.rule_id
            ),
            None => println!("    {:<28} {}", f.path, f.value()),
        }
    }
    for w in &v.withheld {
        match (&w.by, &w.rule_id) {
            (Some(by), Some(rule)) => {
                println!("    (withheld {}… by {by} under {rule})", &w.digest[..12])
            }
            _ => println!("    (withheld {}…)", &w.digest[..12]),
        }
    }
    if !v.custody.is_empty() {
        println!("  custody    {}", v.path().join(" -> "));
        for c in &v.custody {
            println!(
                "    {} -> {} at {}  policy {}  withheld {} generalised {}{}",
                c.node,
                c.to,
                timefmt::format_ms(c.at_ms),
                if c.policy_version.is_empty() {
                    "-"
                } else {
                    &c.policy_version
                },
                c.withheld,
                c.transformed,
                c.round
                    .map(|(i, n)| format!("  signed in a round ({} of {n})", i + 1))
                    .unwrap_or_default()
            );
        }
    }
}
