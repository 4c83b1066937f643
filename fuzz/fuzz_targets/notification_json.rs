//! Arbitrary bytes as a published notification: what `Publisher.Publish` and `PublishStream`
//! hand to `Notification::from_json`. Must never panic. Whatever parses must also seal, and the
//! sealed envelope must inspect with exactly the notification's fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_core::envelope;
use tidewire_core::keys::SigningKey;
use tidewire_core::{Notification, NotificationId};

fuzz_target!(|data: &[u8]| {
    let Ok(n) = Notification::from_json(data) else {
        return;
    };
    let key = SigningKey::from_seed([1; 32]);
    let origin = "maoc-n".parse().expect("node id");
    let env = envelope::seal(&n, &origin, &key, NotificationId([7; 16]), 1, 0);
    let view = envelope::inspect(&env).expect("a sealed notification inspects");
    assert_eq!(view.fields.len(), n.fields.len());
});
