//! A value that lives on one thread inside a namespace, driven by closures.
//!
//! Loader objects (the XDP director) resolve interface names in, and may talk
//! netlink to, the namespace of the calling thread, and need not be `Send`: an
//! [`NsActor`] creates the value on a thread that entered the namespace, runs every
//! call there, and drops it there.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::netns::Netns;
use crate::{LabError, Result};

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

#[derive(Debug)]
pub struct NsActor<S> {
    what: String,
    jobs: Option<mpsc::Sender<Job<S>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

fn gone(what: &str) -> LabError {
    LabError::Io {
        what: format!("{what}: its thread has ended"),
        source: std::io::ErrorKind::BrokenPipe.into(),
    }
}

impl<S: 'static> NsActor<S> {
    /// Creates the value with `init` on a new thread inside `netns`.
    pub fn start<E: std::fmt::Display>(
        netns: &Netns,
        what: &str,
        init: impl FnOnce() -> std::result::Result<S, E> + Send + 'static,
    ) -> Result<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let w = what.to_owned();
        let thread = netns.spawn(move || {
            let mut state = match init() {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(LabError::Bpf {
                        what: w,
                        detail: e.to_string(),
                    }));
                    return;
                }
            };
            // Ends when the actor is dropped (the sender goes away).
            for job in jobs_rx {
                job(&mut state);
            }
        })?;
        let ready = ready_rx.recv().map_err(|_| gone(what));
        let actor = Self {
            what: what.to_owned(),
            jobs: Some(jobs_tx),
            thread: Some(thread),
        };
        ready??;
        Ok(actor)
    }

    /// Runs `f` on the value, on its thread, and returns the result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::channel();
        let job: Job<S> = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.jobs
            .as_ref()
            .ok_or_else(|| gone(&self.what))?
            .send(job)
            .map_err(|_| gone(&self.what))?;
        rx.recv().map_err(|_| gone(&self.what))
    }
}

impl<S> Drop for NsActor<S> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                eprintln!("xdp-lab: {} panicked", self.what);
            }
        }
    }
}
