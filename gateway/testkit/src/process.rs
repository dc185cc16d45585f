//! Processes a test starts: free ports, and children killed on drop.

use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

/// A port that was free a moment ago (bind to it soon, or retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard { child: Some(child) }
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The child, while it has not been reaped.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// SIGKILL and reap (a crash, as far as the others can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful stop); see [`ChildGuard::wait_exit`].
    pub fn terminate(&self) {
        if let Some(id) = self.id() {
            let status = Command::new("kill")
                .args(["-TERM", &id.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -TERM {id} failed");
        }
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the exit for up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = crate::poll_until_blocking(timeout, || self.try_wait())?;
        self.child = None;
        Some(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
