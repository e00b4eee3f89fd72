//! Cross-request batching: one inference worker, one bounded queue.
//!
//! Requests decode their photos elsewhere and submit preprocessed pixels here.
//! A single worker thread owns the compute threads (concurrent requests must
//! never oversubscribe the CPU); it takes up to
//! `max_batch_size` images from *all* in-flight requests, waiting at most
//! `max_wait` for a batch to fill, and answers each image on its own channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Runs the image tower on a batch of preprocessed images.
pub trait ImageEncoder: Send + 'static {
    /// Embeds each image (CHW f32 pixels) and returns one vector per image, in order.
    fn encode(&mut self, batch: &[&[f32]]) -> Result<Vec<Vec<f32>>, String>;
}

/// Batching settings.
#[derive(Clone, Debug)]
pub struct BatcherConfig {
    /// Largest batch the worker runs.
    pub max_batch_size: usize,
    /// Longest time the worker waits for a batch to fill after its first image.
    pub max_wait: Duration,
    /// Images that may be queued or reserved at once; beyond it submissions are refused.
    pub queue_capacity: usize,
}

/// The result of embedding one image, with the time it spent in each stage.
#[derive(Debug)]
pub struct Embedded {
    /// The projected image features.
    pub embedding: Vec<f32>,
    /// Time between submission and the start of its batch.
    pub queue_wait: Duration,
    /// Time the whole batch took in the model.
    pub embed_time: Duration,
    /// Size of the batch this image ran in.
    pub batch_size: usize,
}

/// Why an image could not be embedded by the batcher.
#[derive(Debug, thiserror::Error, Clone)]
pub enum BatchError {
    /// The queue has no room for the request's images.
    #[error("inference queue is full")]
    QueueFull,
    /// The model failed on the batch.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The worker stopped (shutdown or crash).
    #[error("inference worker stopped")]
    Stopped,
}

struct Job {
    /// The reservation (request) the image belongs to.
    request: u64,
    pixels: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Embedded, BatchError>>,
}

/// Handle to the inference worker; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    /// Images queued or reserved; bounded by `capacity`.
    reserved: Arc<AtomicUsize>,
    capacity: usize,
    next_request: Arc<std::sync::atomic::AtomicU64>,
    /// Cleared when the worker thread ends, however it ends.
    running: Arc<std::sync::atomic::AtomicBool>,
}

/// Clears the batcher's `running` flag when the worker thread ends, on a
/// normal return and on a panic alike.
struct Running(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Room reserved in the queue for one image of a request; released when the
/// image's batch has run, or on drop if it is never used.
pub struct Slot {
    batcher: Batcher,
    request: u64,
    used: bool,
}

impl Batcher {
    /// Starts the worker thread that owns `encoder`.
    pub fn spawn(mut encoder: impl ImageEncoder, config: BatcherConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let reserved = Arc::new(AtomicUsize::new(0));
        let worker_reserved = reserved.clone();
        let max_batch = config.max_batch_size.max(1);
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let guard = Running(running.clone());
        std::thread::Builder::new()
            .name("ongi-inference".into())
            .spawn(move || {
                let _running = guard;
                while let Some(batch) = next_batch(&rx, max_batch, config.max_wait) {
                    run_batch(&mut encoder, batch, &worker_reserved);
                }
            })?;
        Ok(Self {
            tx,
            reserved,
            capacity: config.queue_capacity.max(1),
            next_request: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            running,
        })
    }

    /// Whether the inference worker is still running (it ends only by a
    /// panic of the model code, or when every handle is gone).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Reserves room for `n` images of one request, or refuses at once when the
    /// queue is full (the caller answers 503 instead of letting the queue grow
    /// without limit).
    pub fn reserve(&self, n: usize) -> Result<Vec<Slot>, BatchError> {
        let mut current = self.reserved.load(Ordering::Acquire);
        loop {
            if current + n > self.capacity {
                return Err(BatchError::QueueFull);
            }
            match self.reserved.compare_exchange_weak(
                current,
                current + n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        metrics::gauge!("ongi_queue_depth").set(self.depth() as f64);
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        Ok((0..n)
            .map(|_| Slot {
                batcher: self.clone(),
                request,
                used: false,
            })
            .collect())
    }

    /// Images currently queued, reserved or in the running batch.
    pub fn depth(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }
}

impl Slot {
    /// Queues the image; resolves when its batch has run.
    pub async fn embed(mut self, pixels: Vec<f32>) -> Result<Embedded, BatchError> {
        // From here the slot belongs to the job and the worker releases it.
        self.used = true;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request: self.request,
            pixels,
            enqueued: Instant::now(),
            reply,
        };
        if let Err(mpsc::SendError(job)) = self.batcher.tx.send(job) {
            drop(job);
            release(&self.batcher.reserved, 1);
            return Err(BatchError::Stopped);
        }
        rx.await.map_err(|_| BatchError::Stopped)?
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.used {
            release(&self.batcher.reserved, 1);
        }
    }
}

fn release(reserved: &AtomicUsize, n: usize) {
    let now = reserved.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
    metrics::gauge!("ongi_queue_depth").set(now as f64);
}

/// Blocks for the first job, then gathers more until the batch is full or
/// `max_wait` has passed. `None` once every sender is gone.
fn next_batch(rx: &mpsc::Receiver<Job>, max_batch: usize, max_wait: Duration) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let deadline = Instant::now() + max_wait;
    let mut batch = vec![first];
    while batch.len() < max_batch {
        // Take what is already queued without waiting.
        match rx.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn run_batch(encoder: &mut impl ImageEncoder, batch: Vec<Job>, reserved: &AtomicUsize) {
    let started = Instant::now();
    let n = batch.len();
    let inputs: Vec<&[f32]> = batch.iter().map(|j| j.pixels.as_slice()).collect();
    let result = encoder.encode(&inputs);
    let embed_time = started.elapsed();
    // Free the queue room before answering, so a caller that sees its result
    // also sees the room released.
    release(reserved, n);
    let mut requests: Vec<u64> = batch.iter().map(|j| j.request).collect();
    requests.sort_unstable();
    requests.dedup();
    metrics::histogram!("ongi_batch_size").record(n as f64);
    // Distinct requests per batch: above 1 proves cross-request batching.
    metrics::histogram!("ongi_batch_requests").record(requests.len() as f64);
    metrics::histogram!("ongi_batch_seconds").record(embed_time.as_secs_f64());
    match result {
        Ok(rows) if rows.len() == n => {
            metrics::counter!("ongi_images_embedded_total").increment(n as u64);
            for (job, embedding) in batch.into_iter().zip(rows) {
                let queue_wait = started.saturating_duration_since(job.enqueued);
                // A requester that went away (timeout, disconnect) is not an error here.
                let _ = job.reply.send(Ok(Embedded {
                    embedding,
                    queue_wait,
                    embed_time,
                    batch_size: n,
                }));
            }
        }
        other => {
            let msg = match other {
                Err(e) => e,
                Ok(rows) => format!("model returned {} rows for {n} images", rows.len()),
            };
            tracing::error!(error = %msg, batch = n, "inference batch failed");
            for job in batch {
                let _ = job.reply.send(Err(BatchError::Inference(msg.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums each image's pixels, slowly enough that batches can form.
    struct SumEncoder {
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl ImageEncoder for SumEncoder {
        fn encode(&mut self, batch: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
            self.batches.lock().unwrap().push(batch.len());
            std::thread::sleep(Duration::from_millis(20));
            Ok(batch.iter().map(|p| vec![p.iter().sum()]).collect())
        }
    }

    fn batcher(cap: usize) -> (Batcher, Arc<std::sync::Mutex<Vec<usize>>>) {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = Batcher::spawn(
            SumEncoder {
                batches: batches.clone(),
            },
            BatcherConfig {
                max_batch_size: 4,
                max_wait: Duration::from_millis(50),
                queue_capacity: cap,
            },
        )
        .unwrap();
        (b, batches)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn each_caller_gets_its_own_result_and_batches_mix_callers() {
        let (b, batches) = batcher(64);
        let mut tasks = Vec::new();
        for caller in 0..6 {
            let b = b.clone();
            tasks.push(tokio::spawn(async move {
                let slots = b.reserve(2).unwrap();
                let mut out = Vec::new();
                for (i, slot) in slots.into_iter().enumerate() {
                    let v = (caller * 10 + i) as f32;
                    out.push((v, slot.embed(vec![v, v]).await.unwrap()));
                }
                out
            }));
        }
        for t in tasks {
            for (v, e) in t.await.unwrap() {
                assert_eq!(e.embedding, vec![2.0 * v]);
                assert!(e.batch_size >= 1 && e.batch_size <= 4);
            }
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.iter().sum::<usize>(), 12);
        // Each caller submits one image at a time, so any batch above 1 mixes callers.
        assert!(batches.iter().any(|&n| n > 1), "batches: {batches:?}");
        assert_eq!(b.depth(), 0);
    }

    #[tokio::test]
    async fn full_queue_is_refused_and_released_reservations_free_room() {
        let (b, _) = batcher(5);
        let r = b.reserve(4).unwrap();
        assert!(matches!(b.reserve(2), Err(BatchError::QueueFull)));
        drop(r);
        assert_eq!(b.depth(), 0);
        let mut slots = b.reserve(5).unwrap();
        let e = slots.pop().unwrap().embed(vec![1.0, 2.0]).await.unwrap();
        assert_eq!(e.embedding, vec![3.0]);
        drop(slots);
        assert_eq!(b.depth(), 0);
    }

    /// A model that panics kills the worker; the batcher then says so, for
    /// the health check, and later images fail instead of waiting forever.
    #[tokio::test]
    async fn a_dead_worker_is_reported() {
        struct Panics;
        impl ImageEncoder for Panics {
            fn encode(&mut self, _: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
                panic!("model fault")
            }
        }
        let b = Batcher::spawn(
            Panics,
            BatcherConfig {
                max_batch_size: 1,
                max_wait: Duration::from_millis(1),
                queue_capacity: 4,
            },
        )
        .unwrap();
        assert!(b.is_running());
        let slot = b.reserve(1).unwrap().pop().unwrap();
        assert!(slot.embed(vec![1.0]).await.is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!b.is_running());
        let slot = b.reserve(1).unwrap().pop().unwrap();
        assert!(slot.embed(vec![1.0]).await.is_err());
    }
}
