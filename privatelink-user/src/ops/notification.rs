//! Connection notifications (provider): where a service's connection events are sent
//! (`crate::notify` derives and delivers them).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Caller, OpError, R, get_service, service::own_service, unique};
use crate::model::{ConnectionEvent, MAX_NOTIFICATIONS, Notification, State, check_notification};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNotification {
    /// `http://HOST[:PORT][/PATH]` (port 80 if not given): each event is POSTed there as
    /// JSON.
    #[schema(example = "http://10.0.0.5:8080/privatelink-events")]
    pub url: String,
    /// The events to send, of `connect`, `accept`, `reject`, `disconnect` and `delete`;
    /// all of them if left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>, example = json!(["connect", "accept"]))]
    pub events: Option<Vec<ConnectionEvent>>,
}

/// Subscribes the provider of service `service` (its owner) to its connection events at
/// `req.url`; `id` is the new subscription's (fresh, given by the API).
pub fn add_notification(
    s: &mut State,
    c: &Caller,
    service: &str,
    id: String,
    req: NewNotification,
) -> R<Notification> {
    let svc = own_service(s, c, service)?;
    let events = req.events.unwrap_or_else(|| ConnectionEvent::ALL.to_vec());
    check_notification("", &req.url, &events)?;
    if svc.notifications.len() >= MAX_NOTIFICATIONS {
        return Err(OpError::conflict(
            "notifications",
            format!(
                "service {service} has {MAX_NOTIFICATIONS} notifications already, the most \
                 it may have; remove one first"
            ),
        ));
    }
    unique(
        svc.notifications.iter().any(|n| n.id == id),
        "notification",
        &id,
    )?;
    let n = Notification {
        id,
        url: req.url,
        events,
    };
    svc.notifications.push(n.clone());
    Ok(n)
}

/// The notifications of service `service` (its owner, or the operator).
pub fn list_notifications(s: &State, c: &Caller, service: &str) -> R<Vec<Notification>> {
    Ok(get_service(s, c, service)?.notifications)
}

/// Removes notification `id` of service `service` (its owner).
pub fn remove_notification(s: &mut State, c: &Caller, service: &str, id: &str) -> R<()> {
    let svc = own_service(s, c, service)?;
    if !svc.notifications.iter().any(|n| n.id == id) {
        return Err(OpError::not_found(
            "notification",
            format!("service {service} has no notification {id}"),
        ));
    }
    svc.notifications.retain(|n| n.id != id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{error::ErrorKind, model::EndpointService};

    const LAB: &str = include_str!("../../../tests/lab.toml");

    fn owner() -> Caller {
        Caller::Account("acct-b".into())
    }

    fn req(v: serde_json::Value) -> NewNotification {
        serde_json::from_value(v).unwrap()
    }

    fn add(s: &mut State, c: &Caller, id: &str, v: serde_json::Value) -> R<Notification> {
        add_notification(s, c, "epsrv-b", id.into(), req(v))
    }

    /// The kind and field of a refusal.
    fn refusal<T: std::fmt::Debug>(r: R<T>) -> (ErrorKind, String) {
        let e = r.unwrap_err();
        (e.kind, e.field.unwrap_or_default())
    }

    #[test]
    fn the_owner_subscribes_to_all_events_or_some() {
        let mut s = crate::model::parse_state(LAB).unwrap();
        let n = add(
            &mut s,
            &owner(),
            "n1",
            json!({"url": "http://10.0.0.5:8080/x"}),
        )
        .unwrap();
        assert_eq!(n.events, ConnectionEvent::ALL);
        let n = add(
            &mut s,
            &owner(),
            "n2",
            json!({"url": "http://hooks.example", "events": ["accept", "delete"]}),
        )
        .unwrap();
        assert_eq!(n.events, [ConnectionEvent::Accept, ConnectionEvent::Delete]);
        s.validate().unwrap();
        let ids: Vec<String> = list_notifications(&s, &owner(), "epsrv-b")
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, ["n1", "n2"]);
        assert_eq!(
            list_notifications(&s, &Caller::Admin, "epsrv-b")
                .unwrap()
                .len(),
            2
        );
        remove_notification(&mut s, &owner(), "epsrv-b", "n1").unwrap();
        assert_eq!(s.service("epsrv-b").unwrap().notifications[0].id, "n2");
        assert_eq!(
            refusal(remove_notification(&mut s, &owner(), "epsrv-b", "n1")),
            (ErrorKind::NotFound, "notification".into())
        );
    }

    #[test]
    fn bad_urls_and_events_are_refused_on_their_field() {
        let mut s = crate::model::parse_state(LAB).unwrap();
        for (body, field) in [
            (json!({"url": "https://10.0.0.5/"}), "url"),
            (json!({"url": "10.0.0.5:80"}), "url"),
            (json!({"url": "http://"}), "url"),
            (json!({"url": "http://user:pw@10.0.0.5/"}), "url"),
            (json!({"url": "http://10.0.0.5:0/"}), "url"),
            (
                json!({"url": format!("http://a/{}", "x".repeat(2048))}),
                "url",
            ),
            (json!({"url": "http://10.0.0.5/", "events": []}), "events"),
            (
                json!({"url": "http://10.0.0.5/", "events": ["accept", "accept"]}),
                "events[1]",
            ),
        ] {
            assert_eq!(
                refusal(add(&mut s, &owner(), "n", body.clone())),
                (ErrorKind::Invalid, field.to_string()),
                "{body}"
            );
        }
        assert!(s.service("epsrv-b").unwrap().notifications.is_empty());
        let e = serde_json::from_value::<NewNotification>(
            json!({"url": "http://a/", "events": ["bogus"]}),
        );
        assert!(e.is_err());
    }

    #[test]
    fn only_the_owner_changes_them_and_the_operator_reads_them() {
        let mut s = crate::model::parse_state(LAB).unwrap();
        let url = json!({"url": "http://10.0.0.5/"});
        let stranger = Caller::Account("acct-a".into());
        assert_eq!(
            refusal(add(&mut s, &stranger, "n", url.clone())).0,
            ErrorKind::Forbidden
        );
        assert_eq!(
            refusal(add(&mut s, &Caller::Admin, "n", url.clone())).0,
            ErrorKind::Forbidden
        );
        assert_eq!(
            refusal(add_notification(
                &mut s,
                &owner(),
                "nope",
                "n".into(),
                req(url.clone())
            )),
            (ErrorKind::NotFound, "service".into())
        );
        add(&mut s, &owner(), "n", url).unwrap();
        assert_eq!(
            refusal(list_notifications(&s, &stranger, "epsrv-b")).0,
            ErrorKind::Forbidden
        );
        assert_eq!(
            refusal(remove_notification(&mut s, &stranger, "epsrv-b", "n")).0,
            ErrorKind::Forbidden
        );
        assert_eq!(
            refusal(remove_notification(&mut s, &Caller::Admin, "epsrv-b", "n")).0,
            ErrorKind::Forbidden
        );
        assert_eq!(s.service("epsrv-b").unwrap().notifications.len(), 1);
    }

    #[test]
    fn a_service_has_at_most_eight_with_distinct_ids() {
        let mut s = crate::model::parse_state(LAB).unwrap();
        let url = json!({"url": "http://10.0.0.5/"});
        for i in 0..MAX_NOTIFICATIONS {
            add(&mut s, &owner(), &format!("n{i}"), url.clone()).unwrap();
        }
        assert_eq!(
            refusal(add(&mut s, &owner(), "n9", url.clone())),
            (ErrorKind::Conflict, "notifications".into())
        );
        remove_notification(&mut s, &owner(), "epsrv-b", "n3").unwrap();
        assert_eq!(
            refusal(add(&mut s, &owner(), "n0", url)),
            (ErrorKind::Conflict, "id".into())
        );
        s.validate().unwrap();
    }

    #[test]
    fn stored_notifications_are_validated_with_their_path() {
        let ok = crate::model::parse_state(LAB).unwrap();
        let broken = |f: &dyn Fn(&mut Vec<Notification>)| {
            let mut s = ok.clone();
            f(&mut s.services[0].notifications);
            s.validate().unwrap_err().to_string()
        };
        let n = |id: &str, url: &str| Notification {
            id: id.into(),
            url: url.into(),
            events: ConnectionEvent::ALL.to_vec(),
        };
        let e = broken(&|v| v.push(n("a", "ftp://x/")));
        assert!(e.starts_with("services[0].notifications[0].url: "), "{e}");
        let e = broken(&|v| v.extend([n("a", "http://x/"), n("a", "http://y/")]));
        assert!(
            e.starts_with("services[0].notifications[1].id: duplicate"),
            "{e}"
        );
        let e = broken(&|v| v.push(n("a/b", "http://x/")));
        assert!(e.starts_with("services[0].notifications[0].id: "), "{e}");
        let e = broken(&|v| v.extend((0..9).map(|i| n(&format!("n{i}"), "http://x/"))));
        assert!(
            e.starts_with("services[0].notifications: 9 notifications"),
            "{e}"
        );
        let e = broken(&|v| {
            v.push(Notification {
                events: vec![],
                ..n("a", "http://x/")
            })
        });
        assert!(
            e.starts_with("services[0].notifications[0].events: "),
            "{e}"
        );
    }

    #[test]
    fn a_service_stored_without_notifications_loads_and_is_stored_as_before() {
        let s = crate::model::parse_state(LAB).unwrap();
        let svc = &s.services[0];
        let stored = serde_json::to_value(svc).unwrap();
        assert!(stored.get("notifications").is_none(), "{stored}");
        let back: EndpointService = serde_json::from_value(stored).unwrap();
        assert_eq!(&back, svc);
        let mut with = svc.clone();
        with.notifications.push(Notification {
            id: "n".into(),
            url: "http://x/".into(),
            events: vec![ConnectionEvent::Reject],
        });
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(
            v["notifications"],
            json!([{"id": "n", "url": "http://x/", "events": ["reject"]}])
        );
        let mut without_events = v.clone();
        without_events["notifications"][0]
            .as_object_mut()
            .unwrap()
            .remove("events");
        let back: EndpointService = serde_json::from_value(without_events).unwrap();
        assert_eq!(back.notifications[0].events, ConnectionEvent::ALL);
    }
}
