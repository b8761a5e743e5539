//! Meter readings over MQTT (SPEC §3 "Integrations", MQTT): one listener
//! per `acrel` integration, one active instance per integration across
//! the cluster (PostgreSQL advisory lock; a standby takes over).
//!
//! The listener subscribes `<prefix>/+/meter/+/data|alert|status` at QoS 1
//! with a fixed client id (`karvon-<integration>`) and a persistent
//! session, and acknowledges a message only after what it carries is
//! committed: readings are batched (one transaction per batch, many
//! meters), so a crash before the commit leaves the messages
//! unacknowledged and the broker delivers them again; the meter's state
//! makes the repeat a no-op. Malformed payloads are counted, logged and
//! acknowledged. Messages belong to the integration's tenant. `status`
//! messages change the meter's status (and confirm relay commands);
//! `alert` messages record the device's alarm (the alert rules raise it).
//!
//! The listener also sends the relay commands operators requested for
//! its meters (`<prefix>/{station}/meter/{id}/command`, QoS 1), times
//! out those not confirmed within `settings.relay_timeout_secs`, and marks
//! silent the meters it recorded no reading of for
//! `settings.offline_after_secs` (the alert rules raise `meter_offline`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use karvon_domain::Id;
use karvon_domain::ids::meter_stream_id;
use karvon_domain::meter::{
    DeviceAlert, Meter, MeterCommand, Reading, ReadingValues, SupplyStatus,
};
use karvon_projections::EventMetadata;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::StorageError;
use crate::db::Db;
use crate::integrations;
use crate::store::{BatchError, CommandError, CommandExecutor, Loaded, StreamWrite, commit_batch};

/// Messages committed per batch at most.
const BATCH: usize = 1_000;
/// How long a batch waits for more messages once it has one.
const LINGER: Duration = Duration::from_millis(20);
/// How often requested relay commands are looked for.
const DISPATCH: Duration = Duration::from_millis(250);
/// How often the registry of `acrel` integrations is read again.
const REFRESH: Duration = Duration::from_secs(2);

/// Runs a listener for every `acrel` integration until `shutdown`.
pub async fn run(
    db: Db,
    meters: Arc<CommandExecutor<Meter>>,
    secrets_key: Option<integrations::SecretsKey>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, (String, watch::Sender<bool>)> = HashMap::new();
    let mut refused: HashSet<String> = HashSet::new();
    loop {
        match integrations::of_kind(&db, "acrel").await {
            Ok(found) => {
                let mut seen = Vec::new();
                for (at, (integration, _)) in found.iter().enumerate() {
                    let id = integration.id.to_string();
                    // Registration refuses a topic another tenant claims;
                    // integrations stored before that rule may still
                    // overlap: the oldest keeps the topic, the others
                    // never listen (a tenant never hears another's meters).
                    if let Some((older, _)) = found[..at].iter().find(|(older, _)| {
                        older.tenant_id != integration.tenant_id
                            && integrations::topics_collide(&older.settings, &integration.settings)
                    }) {
                        if refused.insert(id.clone()) {
                            tracing::error!(
                                integration = id,
                                tenant = integration.tenant_id,
                                older = %older.id,
                                "MQTT listener not started: its broker and topic prefix overlap an older integration of another tenant"
                            );
                        }
                        continue;
                    }
                    refused.remove(&id);
                    let settings = format!(
                        "{}{}",
                        integration.settings,
                        Value::Object(integration.sealed_secrets.clone())
                    );
                    seen.push(id.clone());
                    if running
                        .get(&id)
                        .is_some_and(|(known, _)| *known == settings)
                    {
                        continue;
                    }
                    // New, or its settings changed: (re)start it.
                    if let Some((_, stop)) = running.remove(&id) {
                        let _ = stop.send(true);
                    }
                    let (stop, stopped) = watch::channel(false);
                    let listener = Listener {
                        db: db.clone(),
                        meters: meters.clone(),
                        integration: id.clone(),
                        tenant: integration.tenant_id.clone(),
                        settings: integration.settings.clone(),
                        credentials: credentials(secrets_key.as_ref(), integration),
                    };
                    tokio::spawn(listener.run_locked(stopped));
                    running.insert(id, (settings, stop));
                }
                running.retain(|id, (_, stop)| {
                    let keep = seen.contains(id);
                    if !keep {
                        let _ = stop.send(true);
                    }
                    keep
                });
            }
            Err(error) => tracing::warn!(%error, "reading the acrel integrations failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = shutdown.changed() => {
                for (_, stop) in running.values() {
                    let _ = stop.send(true);
                }
                return;
            }
        }
    }
}

struct Listener {
    db: Db,
    meters: Arc<CommandExecutor<Meter>>,
    integration: String,
    tenant: String,
    settings: Value,
    /// The broker login from the sealed secrets (`mqtt_username`,
    /// `mqtt_password`); `Err` says why they could not be opened.
    credentials: Result<Option<(String, String)>, String>,
}

/// The system's trusted roots as PEM, for rumqttc's TLS configuration
/// (its own default loader panics when the store cannot be read; this
/// answers why instead).
fn system_roots_pem() -> Result<Vec<u8>, String> {
    use base64::Engine;
    let roots = rustls_native_certs::load_native_certs()
        .map_err(|error| format!("the system's TLS roots could not be read: {error}"))?;
    if roots.is_empty() {
        return Err("no trusted TLS roots found (set SSL_CERT_FILE)".to_string());
    }
    let mut pem = Vec::new();
    for root in roots {
        let text = base64::engine::general_purpose::STANDARD.encode(root.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in text.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

/// The broker login of `integration`, opened from its sealed secrets.
fn credentials(
    key: Option<&integrations::SecretsKey>,
    integration: &integrations::StoredIntegration,
) -> Result<Option<(String, String)>, String> {
    let sealed = &integration.sealed_secrets;
    if !sealed.contains_key("mqtt_username") {
        return Ok(None);
    }
    let key =
        key.ok_or("its MQTT credentials are sealed but the server has no KARVON_SECRETS_KEY")?;
    let secrets = key
        .open(integration.id, sealed)
        .map_err(|error| error.to_string())?;
    let text = |name: &str| {
        secrets
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Ok(Some((text("mqtt_username"), text("mqtt_password"))))
}

/// A `data` message's payload (`fixtures/acrel/webhook-meter-reading.json`).
#[derive(Deserialize)]
struct DataPayload {
    timestamp: DateTime<Utc>,
    #[serde(default)]
    meter_id: Option<String>,
    #[serde(default)]
    meter_type: Option<String>,
    data: DataValues,
}

#[derive(Deserialize)]
struct DataValues {
    #[serde(default)]
    reading: Option<Decimal>,
    #[serde(default)]
    consumption: Option<Decimal>,
    #[serde(default)]
    voltage: Option<Decimal>,
    #[serde(default)]
    current: Option<Decimal>,
    #[serde(default)]
    power_factor: Option<Decimal>,
}

/// A `status` message's payload (`fixtures/acrel/webhook-status-change.json`).
#[derive(Deserialize)]
struct StatusPayload {
    timestamp: DateTime<Utc>,
    #[serde(default)]
    meter_id: Option<String>,
    new_status: SupplyStatus,
    #[serde(default)]
    reason: Option<String>,
}

/// What one message says about one meter.
struct Parsed {
    meter_id: Id,
    command: MeterCommand,
}

impl Listener {
    /// Runs while holding the integration's lock (PostgreSQL: a session
    /// advisory lock on a connection of its own; a standby retries).
    async fn run_locked(self, mut stopped: watch::Receiver<bool>) {
        loop {
            let lock = match &self.db {
                Db::Postgres(pool) => match take_lock(pool, &self.integration).await {
                    Ok(Some(lock)) => Some(Some(lock)),
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%error, "taking the MQTT listener lock failed");
                        None
                    }
                },
                Db::Sqlite(_) => Some(None),
            };
            if let Some(lock) = lock {
                self.listen(stopped.clone()).await;
                if let Some(lock) = lock {
                    use sqlx::Connection;
                    let _ = lock.close().await;
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    /// The client's options: broker, TLS and login through rumqttc's own
    /// settings (the URL parsed by `url`, never split by hand).
    fn options(&self) -> Result<(MqttOptions, String), String> {
        let url = self.settings["mqtt_url"].as_str().unwrap_or_default();
        let (broker, prefix) = integrations::mqtt_topics(&self.settings).ok_or_else(|| {
            match integrations::Broker::parse(url) {
                Err(why) => format!("mqtt_url {why}"),
                Ok(_) => "unusable settings".to_string(),
            }
        })?;
        integrations::check_topic_prefix(&prefix).map_err(|why| format!("topic_prefix {why}"))?;
        let mut options = MqttOptions::new(
            format!("karvon-{}", self.integration),
            broker.host.clone(),
            broker.port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(false);
        options.set_manual_acks(true);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        if broker.tls {
            // rustls (rumqttc's own TLS) with the system's roots;
            // SSL_CERT_FILE / SSL_CERT_DIR name others.
            options.set_transport(rumqttc::Transport::tls(system_roots_pem()?, None, None));
        }
        if let Some((username, password)) = self.credentials.clone()? {
            options.set_credentials(username, password);
        }
        Ok((options, prefix))
    }

    async fn listen(&self, mut stopped: watch::Receiver<bool>) {
        let (options, prefix) = match self.options() {
            Ok(options) => options,
            Err(why) => {
                tracing::error!(
                    integration = self.integration,
                    why,
                    "MQTT listener not started"
                );
                return;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        // Unbounded: the network side must keep polling the connection
        // (which is what sends our acks) while a batch commits; the
        // broker's in-flight window bounds what waits here.
        let (messages, mut inbox) = mpsc::unbounded_channel::<Publish>();
        let subscriber = client.clone();
        let topics: Vec<String> = ["data", "alert", "status"]
            .iter()
            .map(|kind| format!("{prefix}/+/meter/+/{kind}"))
            .collect();
        // The network side: polls the connection (reconnecting with
        // back-off), subscribes on every connect, forwards publishes.
        let network = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        for topic in &topics {
                            let _ = subscriber.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if messages.send(publish).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        failures += 1;
                        let wait = Duration::from_millis(200 * 2u64.pow(failures.min(5)));
                        tracing::warn!(%error, ?wait, "MQTT connection lost; reconnecting");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        });
        let offline_after = self.settings["offline_after_secs"]
            .as_u64()
            .unwrap_or(3600)
            .max(1);
        let mut chores = Chores {
            sent: HashSet::new(),
            offline_after,
            sweep_every: Duration::from_secs((offline_after / 4).clamp(1, 60)),
            swept: tokio::time::Instant::now(),
        };
        let mut tick = tokio::time::interval(DISPATCH);
        let mut batch = Vec::new();
        // The batch after this one, filled while this one commits; once
        // full, also grouped and decided on the state this one leaves.
        let mut pipe = Pipe {
            next: Vec::new(),
            ahead: None,
            open: true,
        };
        loop {
            if batch.is_empty() {
                if !pipe.open {
                    break;
                }
                tokio::select! {
                    received = inbox.recv_many(&mut batch, BATCH) => {
                        if received == 0 {
                            break;
                        }
                    }
                    _ = tick.tick() => {
                        self.chores(&client, &prefix, &mut chores).await;
                        continue;
                    }
                    _ = stopped.changed() => break,
                }
            } else if tick.tick().now_or_never().is_some() {
                // Busy: relay commands and the offline sweep still get
                // their turn, between batches.
                self.chores(&client, &prefix, &mut chores).await;
            }
            let (grouped, decided) = match pipe.ahead.take() {
                Some(ready) => ready,
                None => {
                    // Linger briefly so a burst commits together.
                    let deadline = tokio::time::Instant::now() + LINGER;
                    while pipe.open && batch.len() < BATCH {
                        match tokio::time::timeout_at(deadline, inbox.recv()).await {
                            Ok(Some(publish)) => batch.push(publish),
                            Ok(None) => pipe.open = false,
                            Err(_) => break,
                        }
                    }
                    let grouped = self.group(&prefix, &batch);
                    let decided = self.decide(&grouped, &[]).await.ok().flatten();
                    (grouped, decided)
                }
            };
            let landed = match decided {
                Some(decided) => {
                    self.commit_piped(decided, &prefix, &mut inbox, &mut pipe)
                        .await
                }
                None => false,
            };
            if !landed {
                // Decided on state that did not hold, or the commit failed:
                // the careful way, retrying until it lands.
                if let Some((_, early)) = &mut pipe.ahead {
                    *early = None;
                }
                self.commit_until_done(&grouped, &stopped).await;
            }
            if *stopped.borrow() {
                break;
            }
            for publish in batch.drain(..) {
                let _ = client.ack(&publish).await;
            }
            std::mem::swap(&mut batch, &mut pipe.next);
        }
        let _ = client.disconnect().await;
        network.abort();
    }

    /// Sends requested relay commands; now and then marks silent meters.
    async fn chores(&self, client: &AsyncClient, prefix: &str, chores: &mut Chores) {
        if let Err(error) = self.dispatch(client, prefix, &mut chores.sent).await {
            tracing::warn!(%error, "sending relay commands failed");
        }
        if chores.swept.elapsed() >= chores.sweep_every {
            chores.swept = tokio::time::Instant::now();
            if let Err(error) = self.mark_silent(chores.offline_after).await {
                tracing::warn!(%error, "marking silent meters failed");
            }
        }
    }

    /// Publishes the relay commands requested for this integration's meters
    /// (once per instance: `sent`; the command id lets devices drop a
    /// repeat) and times out those not confirmed in time.
    async fn dispatch(
        &self,
        client: &AsyncClient,
        prefix: &str,
        sent: &mut HashSet<String>,
    ) -> Result<(), StorageError> {
        let mut reader = crate::records::tenant_reader(&self.db, &self.tenant).await?;
        let open =
            crate::read_models::meters::open_commands(&mut reader, &self.tenant, &self.integration)
                .await;
        reader.finish().await?;
        let timeout = chrono::Duration::seconds(
            self.settings["relay_timeout_secs"]
                .as_i64()
                .unwrap_or(120)
                .max(1),
        );
        let tenant = Id::parse(self.tenant.as_str())
            .map_err(|error| StorageError::Corrupt(format!("tenant: {error}")))?;
        for (command, station) in open? {
            let Ok(meter_id) = Id::parse(command.meter_id.as_str()) else {
                continue;
            };
            let stream = meter_stream_id(&tenant, &meter_id);
            let now = Utc::now();
            let next = if now - command.requested_at > timeout {
                Some(MeterCommand::TimeOut {
                    command_id: command.command_id.clone(),
                    at: now,
                })
            } else if command.status == "requested" && !sent.contains(&command.command_id) {
                let payload = serde_json::json!({
                    "command": command.action,
                    "tariff_id": command.tariff_id,
                    "timestamp": now.to_rfc3339(),
                    "source": "karvon",
                    "command_id": command.command_id,
                });
                let topic = format!(
                    "{prefix}/{}/meter/{}/command",
                    station.as_deref().unwrap_or("-"),
                    command.meter_id
                );
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                    .await
                    .is_err()
                {
                    continue;
                }
                sent.insert(command.command_id.clone());
                Some(MeterCommand::MarkPublished {
                    command_id: command.command_id.clone(),
                })
            } else {
                None
            };
            if let Some(next) = next {
                match self.meters.execute(&stream, next, &self.metadata()).await {
                    Ok(_) | Err(CommandError::Domain(_)) => {}
                    Err(CommandError::Storage(error)) => return Err(error),
                    Err(other) => return Err(StorageError::EventStore(other.to_string())),
                }
            }
        }
        Ok(())
    }

    /// Marks silent the meters of this integration with no reading
    /// recorded for `offline_after` seconds (a batch at a time).
    async fn mark_silent(&self, offline_after: u64) -> Result<(), StorageError> {
        let before = Utc::now()
            - chrono::Duration::seconds(i64::try_from(offline_after).unwrap_or(i64::MAX / 1000));
        let mut reader = crate::records::tenant_reader(&self.db, &self.tenant).await?;
        let quiet = crate::read_models::meters::quiet_meters(
            &mut reader,
            &self.tenant,
            &self.integration,
            before,
            500,
        )
        .await;
        reader.finish().await?;
        let tenant = Id::parse(self.tenant.as_str())
            .map_err(|error| StorageError::Corrupt(format!("tenant: {error}")))?;
        for (meter, readings) in quiet? {
            let Ok(meter_id) = Id::parse(meter) else {
                continue;
            };
            let command = MeterCommand::MarkSilent {
                readings_seen: u64::try_from(readings).unwrap_or_default(),
                at: Utc::now(),
            };
            let stream = meter_stream_id(&tenant, &meter_id);
            match self
                .meters
                .execute(&stream, command, &self.metadata())
                .await
            {
                Ok(_) | Err(CommandError::Domain(_)) | Err(CommandError::Contended) => {}
                Err(CommandError::Storage(error)) => return Err(error),
                Err(other) => return Err(StorageError::EventStore(other.to_string())),
            }
        }
        Ok(())
    }

    fn metadata(&self) -> EventMetadata {
        EventMetadata {
            tenant_id: self.tenant.clone(),
            occurred_at: Utc::now(),
            source: karvon_projections::metadata::Source::Mqtt
                .as_str()
                .to_string(),
            actor: format!("integration:{}", self.integration),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            causation_id: None,
            idempotency_key: None,
            request_hash: None,
            response_id: None,
        }
    }

    /// Commits the batch, retrying storage failures; the messages stay
    /// unacknowledged meanwhile (and after a crash, delivered again).
    async fn commit_until_done(&self, grouped: &PerMeter, stopped: &watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            match self.commit(grouped).await {
                Ok(()) => return,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "committing MQTT readings failed; retrying");
                    if *stopped.borrow() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50))))
                        .await;
                }
            }
        }
    }

    /// Commits a decided batch in a task of its own, and meanwhile fills
    /// `pipe.next`; once that is full, groups it and decides it on the
    /// state this batch leaves (`pipe.ahead`), so deciding one batch
    /// overlaps committing the one before. True when the batch landed.
    async fn commit_piped(
        &self,
        mut decided: Decided,
        prefix: &str,
        inbox: &mut mpsc::UnboundedReceiver<Publish>,
        pipe: &mut Pipe,
    ) -> bool {
        if decided.writes.is_empty() {
            return true;
        }
        let (db, metadata) = (self.db.clone(), self.metadata());
        let writes = std::mem::take(&mut decided.writes);
        let mut commit = tokio::spawn(async move { commit_batch(&db, &writes, &metadata).await });
        let mut outcome = None;
        while outcome.is_none() && pipe.open && pipe.next.len() < BATCH {
            tokio::select! {
                biased;
                done = &mut commit => outcome = Some(done),
                received = inbox.recv() => match received {
                    Some(publish) => pipe.next.push(publish),
                    None => pipe.open = false,
                },
            }
        }
        if outcome.is_none() && pipe.next.len() == BATCH {
            let grouped = self.group(prefix, &pipe.next);
            let early = self.decide(&grouped, &decided.written).await.ok().flatten();
            pipe.ahead = Some((grouped, early));
        }
        let outcome = match outcome {
            Some(done) => done,
            None => commit.await,
        };
        match outcome {
            Ok(Ok(())) => {
                self.meters.remember(decided.written);
                true
            }
            // A meter was written meanwhile (a webhook, another instance)
            // or storage failed: the careful way decides again.
            Ok(Err(_)) | Err(_) => {
                self.meters.forget(&decided.streams);
                false
            }
        }
    }

    /// Commits the batch: decided on the meters' latest state, again on
    /// stored state when that did not hold.
    async fn commit(&self, grouped: &PerMeter) -> Result<(), StorageError> {
        let metadata = self.metadata();
        for _ in 0..10 {
            let Some(decided) = self.decide(grouped, &[]).await? else {
                continue;
            };
            match commit_batch(&self.db, &decided.writes, &metadata).await {
                Ok(()) => {
                    self.meters.remember(decided.written);
                    return Ok(());
                }
                // A meter was written meanwhile (a webhook, another
                // instance): decide again on stored state.
                Err(BatchError::Conflict) => self.meters.forget(&decided.streams),
                Err(BatchError::Storage(error)) => {
                    self.meters.forget(&decided.streams);
                    return Err(error);
                }
            }
        }
        Err(StorageError::EventStore(
            "the batch's meters keep changing under it".into(),
        ))
    }

    /// The batch's messages per meter, each meter's in arrival order
    /// (consecutive readings in one command); every message counted once,
    /// the malformed logged.
    fn group(&self, prefix: &str, batch: &[Publish]) -> PerMeter {
        let mut per_meter = PerMeter::new();
        for publish in batch {
            match parse(prefix, publish) {
                Ok(Some(parsed)) => {
                    metrics::counter!("karvon_mqtt_messages_total", "outcome" => "handled")
                        .increment(1);
                    let (_, commands) = per_meter
                        .entry(parsed.meter_id.to_string())
                        .or_insert_with(|| (parsed.meter_id.clone(), Vec::new()));
                    merge(commands, parsed.command);
                }
                Ok(None) => {
                    metrics::counter!("karvon_mqtt_messages_total", "outcome" => "not_handled")
                        .increment(1);
                }
                Err(why) => {
                    metrics::counter!("karvon_mqtt_messages_total", "outcome" => "malformed")
                        .increment(1);
                    tracing::warn!(
                        integration = self.integration,
                        topic = publish.topic,
                        why,
                        "malformed MQTT message acknowledged"
                    );
                }
            }
        }
        per_meter
    }

    /// Decides the batch on its meters' latest state: from `overlay` (as
    /// a batch still committing leaves them), else as this listener last
    /// committed them, else as stored. `None` when remembered state
    /// answered that a meter has nothing to write: only stored state may
    /// say so, so the meter is forgotten and the batch must be decided
    /// again.
    async fn decide(
        &self,
        grouped: &PerMeter,
        overlay: &[Loaded<Meter>],
    ) -> Result<Option<Decided>, StorageError> {
        let tenant = Id::parse(self.tenant.as_str())
            .map_err(|error| StorageError::Corrupt(format!("tenant: {error}")))?;
        let streams: Vec<String> = grouped
            .values()
            .map(|(meter_id, _)| meter_stream_id(&tenant, meter_id))
            .collect();
        let mut overlaid: HashMap<&str, &Loaded<Meter>> = overlay
            .iter()
            .map(|stream| (stream.aggregate_id(), stream))
            .collect();
        let rest: Vec<String> = streams
            .iter()
            .filter(|stream| !overlaid.contains_key(stream.as_str()))
            .cloned()
            .collect();
        let mut rest = self.meters.load_many_warm(&rest).await?.into_iter();
        let (mut writes, mut written, mut unconfirmed) = (Vec::new(), Vec::new(), Vec::new());
        for ((_, commands), stream) in grouped.values().zip(&streams) {
            let loaded = match overlaid.remove(stream.as_str()) {
                Some(stream) => stream.clone(),
                None => rest.next().ok_or_else(|| {
                    StorageError::EventStore("load_many_warm answered fewer streams".into())
                })?,
            };
            match loaded.decide(commands.clone()).await {
                Ok(Some((write, after))) => {
                    writes.push(write);
                    written.push(after);
                }
                Ok(None) if loaded.is_warm() => unconfirmed.push(stream.clone()),
                Ok(None) => {}
                Err(CommandError::Storage(error)) => return Err(error),
                Err(other) => return Err(StorageError::EventStore(other.to_string())),
            }
        }
        if !unconfirmed.is_empty() {
            self.meters.forget(&unconfirmed);
            return Ok(None);
        }
        Ok(Some(Decided {
            streams,
            writes,
            written,
        }))
    }
}

/// A batch's messages per meter: the meter and its commands.
type PerMeter = BTreeMap<String, (Id, Vec<MeterCommand>)>;

/// A batch decided, ready to commit.
struct Decided {
    /// Every meter stream of the batch.
    streams: Vec<String>,
    writes: Vec<StreamWrite>,
    /// The meters as the writes leave them.
    written: Vec<Loaded<Meter>>,
}

/// The listener's look ahead, while a batch commits.
struct Pipe {
    /// The next batch's messages.
    next: Vec<Publish>,
    /// The next batch grouped and, if that went through, decided.
    ahead: Option<(PerMeter, Option<Decided>)>,
    /// False once the network side has ended.
    open: bool,
}

/// What the listener does between batches besides readings.
struct Chores {
    /// Relay commands this instance published.
    sent: HashSet<String>,
    offline_after: u64,
    sweep_every: Duration,
    swept: tokio::time::Instant,
}

/// The reading a message carries; `None` for the kinds not handled here
/// yet (`alert`, `status`); `Err` says why a payload is unusable.
fn parse(prefix: &str, publish: &Publish) -> Result<Option<Parsed>, String> {
    let rest = publish
        .topic
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or("the topic is outside the prefix")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [station, "meter", topic_meter, kind] = parts.as_slice() else {
        return Err(format!("unexpected topic shape {rest:?}"));
    };
    let kind = match *kind {
        "data" => MessageKind::Reading,
        "status" => MessageKind::Status,
        "alert" => MessageKind::Alert,
        _ => return Ok(None),
    };
    let (meter_id, command) =
        meter_command(kind, Some(topic_meter), Some(station), &publish.payload)?;
    Ok(Some(Parsed { meter_id, command }))
}

/// What an Acrel message (MQTT or webhook) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `data` / `meter-reading`.
    Reading,
    /// `status` / `status-change`.
    Status,
    /// `disconnect-confirm`: the relay is off.
    DisconnectConfirm,
    /// `reconnect-confirm`: the relay is on.
    ReconnectConfirm,
    /// `alert`: a device alarm.
    Alert,
}

/// An `alert` message's payload (`fixtures/acrel/webhook-alert.json`).
#[derive(Deserialize)]
struct AlertPayload {
    timestamp: DateTime<Utc>,
    #[serde(default)]
    meter_id: Option<String>,
    alert_type: String,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    value: Option<Decimal>,
    #[serde(default)]
    threshold: Option<Decimal>,
    #[serde(default)]
    message: Option<String>,
}

/// A confirmation webhook's payload.
#[derive(Deserialize)]
struct ConfirmPayload {
    timestamp: DateTime<Utc>,
    #[serde(default)]
    meter_id: Option<String>,
}

/// The meter an Acrel payload (`fixtures/acrel/`) is about and the
/// command it amounts to. `topic_meter`: the meter the topic names (the
/// payload's `meter_id` must agree, or may be left out); `Err` says why
/// the payload is unusable.
pub fn meter_command(
    kind: MessageKind,
    topic_meter: Option<&str>,
    station: Option<&str>,
    payload: &[u8],
) -> Result<(Id, MeterCommand), String> {
    let meter = |given: Option<&str>| -> Result<Id, String> {
        let meter = match (given, topic_meter) {
            (Some(given), Some(topic)) if given != topic => {
                return Err(format!(
                    "payload meter_id {given:?} disagrees with the topic's {topic:?}"
                ));
            }
            (Some(meter), _) | (None, Some(meter)) => meter,
            (None, None) => return Err("meter_id is missing".to_string()),
        };
        Id::parse(meter).map_err(|error| format!("meter id {meter:?}: {error}"))
    };
    let read = |error: serde_json::Error| format!("payload: {error}");
    let command = match kind {
        MessageKind::Reading => {
            let payload: DataPayload = serde_json::from_slice(payload).map_err(read)?;
            MeterCommand::RecordReadings {
                meter_id: meter(payload.meter_id.as_deref())?,
                station: station.map(str::to_string),
                meter_type: payload.meter_type,
                readings: vec![Reading {
                    at: payload.timestamp,
                    values: ReadingValues {
                        reading: payload.data.reading,
                        consumption: payload.data.consumption,
                        voltage: payload.data.voltage,
                        current: payload.data.current,
                        power_factor: payload.data.power_factor,
                    },
                }],
            }
        }
        MessageKind::Status => {
            let payload: StatusPayload = serde_json::from_slice(payload).map_err(read)?;
            MeterCommand::ChangeStatus {
                meter_id: meter(payload.meter_id.as_deref())?,
                status: payload.new_status,
                reason: payload.reason,
                at: payload.timestamp,
            }
        }
        MessageKind::Alert => {
            let payload: AlertPayload = serde_json::from_slice(payload).map_err(read)?;
            if payload.alert_type.trim().is_empty() || payload.alert_type.len() > 64 {
                return Err("alert_type must be 1–64 characters".to_string());
            }
            MeterCommand::RecordAlert {
                meter_id: meter(payload.meter_id.as_deref())?,
                alert: DeviceAlert {
                    alert_type: payload.alert_type,
                    severity: payload.severity,
                    value: payload.value,
                    threshold: payload.threshold,
                    message: payload.message,
                    at: payload.timestamp,
                },
            }
        }
        MessageKind::DisconnectConfirm | MessageKind::ReconnectConfirm => {
            let payload: ConfirmPayload = serde_json::from_slice(payload).map_err(read)?;
            let (status, reason) = if kind == MessageKind::DisconnectConfirm {
                (SupplyStatus::Disconnected, "disconnect_confirm")
            } else {
                (SupplyStatus::Connected, "reconnect_confirm")
            };
            MeterCommand::ChangeStatus {
                meter_id: meter(payload.meter_id.as_deref())?,
                status,
                reason: Some(reason.to_string()),
                at: payload.timestamp,
            }
        }
    };
    let meter_id = match &command {
        MeterCommand::RecordReadings { meter_id, .. }
        | MeterCommand::ChangeStatus { meter_id, .. }
        | MeterCommand::RecordAlert { meter_id, .. } => meter_id.clone(),
        _ => return Err("not a message command".to_string()),
    };
    Ok((meter_id, command))
}

/// Appends `command`, folding readings into the previous readings command.
fn merge(commands: &mut Vec<MeterCommand>, command: MeterCommand) {
    if let (
        Some(MeterCommand::RecordReadings {
            station,
            meter_type,
            readings,
            ..
        }),
        MeterCommand::RecordReadings {
            station: new_station,
            meter_type: new_type,
            readings: new_readings,
            ..
        },
    ) = (commands.last_mut(), &command)
    {
        *station = new_station.clone().or(station.take());
        if new_type.is_some() {
            *meter_type = new_type.clone();
        }
        readings.extend(new_readings.iter().cloned());
        return;
    }
    commands.push(command);
}

/// The integration's listener lock on a connection of its own (`None`:
/// another instance holds it).
async fn take_lock(
    pool: &sqlx::PgPool,
    integration: &str,
) -> Result<Option<sqlx::PgConnection>, StorageError> {
    let mut connection = pool.acquire().await?.detach();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("karvon:mqtt:{integration}"))
        .fetch_one(&mut connection)
        .await?;
    Ok(taken.then_some(connection))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, payload: &str) -> Publish {
        Publish::new(topic, QoS::AtLeastOnce, payload.as_bytes().to_vec())
    }

    const READING: &str = r#"{"event_type": "meter_reading", "timestamp": "2024-12-15T10:30:00Z",
        "meter_id": "ACR-001234", "meter_type": "ADL200",
        "data": {"reading": 15234.56, "consumption": 125.5, "voltage": 220.5,
                 "current": 15.2, "power_factor": 0.95}}"#;

    #[test]
    fn a_data_message_is_a_reading_with_exact_decimals() {
        let parsed = parse("acrel", &publish("acrel/S1/meter/ACR-001234/data", READING))
            .expect("parsed")
            .expect("a reading");
        assert_eq!(parsed.meter_id.as_str(), "ACR-001234");
        let MeterCommand::RecordReadings {
            readings, station, ..
        } = parsed.command
        else {
            panic!("a reading");
        };
        assert_eq!(station.as_deref(), Some("S1"));
        assert_eq!(
            readings[0].values.reading.map(|v| v.to_string()),
            Some("15234.56".to_string())
        );
        assert_eq!(
            readings[0].values.power_factor.map(|v| v.to_string()),
            Some("0.95".to_string())
        );
    }

    #[test]
    fn an_alert_message_is_a_device_alarm() {
        let alert = include_str!("testdata/acrel/webhook-alert.json");
        let parsed = parse("acrel", &publish("acrel/S1/meter/ACR-001234/alert", alert));
        assert!(
            matches!(
                &parsed,
                Ok(Some(Parsed {
                    command: MeterCommand::RecordAlert { .. },
                    ..
                }))
            ),
            "{:?}",
            parsed
                .as_ref()
                .map(|p| p.as_ref().map(|p| format!("{:?}", p.command)))
        );
    }

    #[test]
    fn garbage_and_disagreeing_ids_are_refused_other_kinds_left() {
        assert!(parse("acrel", &publish("acrel/S1/meter/X/data", "{not json")).is_err());
        assert!(parse("acrel", &publish("acrel/S1/meter/OTHER/data", READING)).is_err());
        assert!(parse("acrel", &publish("acrel/S1/meter/X/data/extra", READING)).is_err());
        assert!(parse("acrel", &publish("acrel/S1/meter/ACR-001234/alert", "{}")).is_err());
        assert!(matches!(
            parse("acrel", &publish("acrel/S1/meter/ACR-001234/other", "{}")),
            Ok(None)
        ));
        let status = r#"{"timestamp": "2024-12-15T10:30:00Z", "meter_id": "ACR-001234",
            "previous_status": "connected", "new_status": "disconnected", "reason": "remote_command"}"#;
        let parsed = parse(
            "acrel",
            &publish("acrel/S1/meter/ACR-001234/status", status),
        )
        .expect("parsed")
        .expect("a status");
        assert!(matches!(
            parsed.command,
            MeterCommand::ChangeStatus {
                status: SupplyStatus::Disconnected,
                ..
            }
        ));
    }
}
