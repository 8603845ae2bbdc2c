//! KV memory that the KV pools of the models on one device share, and how a pool that needs
//! more gets back what the others hold but no longer use.
//!
//! A pool takes from its budget before it grows, gives back what it shrinks by, and all it
//! holds when dropped. Without a shared budget each model would size its limit from the free
//! memory it saw at its own start, and several models on one GPU would count the same free
//! memory more than once.
//!
//! An idle model's pool keeps its growth through a quiet spell (regrowing costs a copy), so a
//! budget can be spent on memory that nobody is using. Each model's engine joins the budget as
//! a `BudgetMember` that says whether it is idle and how to wake it; a pool that cannot grow
//! asks the idle members to shrink now (`KvBudget::reclaim`) and waits for their answers. A
//! busy member is not waited for (its blocks are in use); it owes a shrink, which it pays as
//! soon as it is idle, so the asker's next try finds the memory.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::ThreadId;
use std::time::Duration;

#[derive(Debug)]
pub struct KvBudget {
    limit: usize,
    used: AtomicUsize,
    members: Mutex<Vec<Weak<BudgetMember>>>,
}

/// One engine drawing on a budget, as the budget sees it. The engine owns it (the budget keeps
/// a weak reference, so a stopped engine leaves by itself).
pub struct BudgetMember {
    /// IDLE, BUSY or OWED (busy, and asked to shrink once idle) in one atomic, so that a
    /// request landing just as the member goes idle is either seen by it or handed to it.
    state: AtomicU8,
    /// The thread that runs the member's pool: a pool asking for memory is never asked itself.
    thread: OnceLock<ThreadId>,
    /// Hands the member a request to shrink; false when the member is gone.
    wake: Box<dyn Fn(Reclaim) -> bool + Send + Sync>,
}

impl std::fmt::Debug for BudgetMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetMember")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl BudgetMember {
    /// `wake` must hand the `Reclaim` to the member's thread (or drop it, which answers it).
    pub fn new(wake: impl Fn(Reclaim) -> bool + Send + Sync + 'static) -> Arc<BudgetMember> {
        Arc::new(BudgetMember {
            state: AtomicU8::new(BUSY),
            thread: OnceLock::new(),
            wake: Box::new(wake),
        })
    }

    /// Names the calling thread as the one that runs the member's pool.
    pub fn runs_on_this_thread(&self) {
        let _ = self.thread.set(std::thread::current().id());
    }

    /// The member's pool holds no running sequence now, so a shrink can be asked of it. True
    /// when another member asked for memory while this one was busy: it owes a shrink now.
    pub fn go_idle(&self) -> bool {
        self.state.swap(IDLE, Ordering::AcqRel) == OWED
    }

    /// The member takes work (call it before touching the pool).
    pub fn go_busy(&self) {
        let _ = self.state.compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A request to shrink reached the member after it went busy: it shrinks once idle.
    pub fn owe(&self) {
        let _ = self.state.compare_exchange(BUSY, OWED, Ordering::AcqRel, Ordering::Acquire);
    }
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const OWED: u8 = 2;

/// A request to shrink, handed to an idle member. Dropping it is the answer, so a member that
/// is gone, or busy after all, or has shrunk, answers just by letting go of it.
#[derive(Debug)]
pub struct Reclaim {
    answers: Arc<Answers>,
}

#[derive(Debug, Default)]
struct Answers {
    left: Mutex<usize>,
    all_in: Condvar,
}

impl Drop for Reclaim {
    fn drop(&mut self) {
        if let Ok(mut left) = self.answers.left.lock() {
            *left = left.saturating_sub(1);
            self.answers.all_in.notify_all();
        }
    }
}

impl KvBudget {
    pub fn new(limit_bytes: usize) -> Arc<KvBudget> {
        Arc::new(KvBudget {
            limit: limit_bytes,
            used: AtomicUsize::new(0),
            members: Mutex::new(Vec::new()),
        })
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit
    }

    /// What the pools drawing on it hold now (it can exceed the limit only by the pools'
    /// first sizes, which they hold from the start).
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn available_bytes(&self) -> usize {
        self.limit.saturating_sub(self.used_bytes())
    }

    /// The members waiting for work now (whose pools `reclaim` would ask to shrink).
    pub fn idle_members(&self) -> usize {
        self.members.lock().map_or(0, |m| {
            m.iter()
                .filter_map(Weak::upgrade)
                .filter(|member| member.state.load(Ordering::Acquire) == IDLE)
                .count()
        })
    }

    /// Adds a member that `reclaim` may ask to shrink.
    pub fn join(&self, member: &Arc<BudgetMember>) {
        if let Ok(mut m) = self.members.lock() {
            m.retain(|w| w.strong_count() > 0);
            m.push(Arc::downgrade(member));
        }
    }

    /// Asks every idle member to shrink its pool and waits (at most `wait`) until each has
    /// answered; busy members are marked as owing a shrink instead. Returns the bytes that
    /// became available meanwhile (0 when no member was idle: nothing to wait for). The member
    /// on the calling thread (the pool that is growing) is neither asked nor marked.
    pub fn reclaim(&self, wait: Duration) -> usize {
        let before = self.available_bytes();
        let me = std::thread::current().id();
        let idle: Vec<Arc<BudgetMember>> = match self.members.lock() {
            Ok(mut m) => {
                m.retain(|w| w.strong_count() > 0);
                m.iter()
                    .filter_map(Weak::upgrade)
                    .filter(|member| member.thread.get() != Some(&me))
                    .filter(|member| {
                        // Busy becomes owed; idle stays idle and is asked.
                        let was = member
                            .state
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s == BUSY).then_some(OWED));
                        was.err() == Some(IDLE)
                    })
                    .collect()
            }
            Err(_) => return 0,
        };
        if idle.is_empty() {
            return 0;
        }
        let answers = Arc::new(Answers {
            left: Mutex::new(idle.len()),
            all_in: Condvar::new(),
        });
        for member in &idle {
            // A member that is gone drops the request unsent, which answers it.
            let _ = (member.wake)(Reclaim { answers: answers.clone() });
        }
        drop(idle);
        if let Ok(left) = answers.left.lock() {
            let _ = answers.all_in.wait_timeout_while(left, wait, |left| *left > 0);
        }
        self.available_bytes().saturating_sub(before)
    }

    /// Takes `bytes` if they fit under the limit (atomically: two engines' threads grow at once).
    pub(crate) fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok()
    }

    /// Counts what a pool already holds, limit or not.
    pub(crate) fn hold(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn give(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(bytes)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Instant;

    /// A member whose "engine" is a thread that gives back `gives` bytes per request.
    fn member_thread(budget: &Arc<KvBudget>, gives: usize) -> (Arc<BudgetMember>, std::thread::JoinHandle<usize>) {
        let (tx, rx) = channel::<Reclaim>();
        let tx = Mutex::new(tx);
        let member = BudgetMember::new(move |r| tx.lock().map(|t| t.send(r).is_ok()).unwrap_or(false));
        budget.join(&member);
        let b = budget.clone();
        let h = std::thread::spawn(move || {
            let mut asked = 0;
            for r in rx {
                b.give(gives);
                asked += 1;
                drop(r);
            }
            asked
        });
        (member, h)
    }

    #[test]
    fn reclaim_waits_for_the_idle_members_and_marks_the_busy_ones() {
        let budget = KvBudget::new(1000);
        budget.hold(1000);
        let (idle, idle_thread) = member_thread(&budget, 300);
        let (busy, busy_thread) = member_thread(&budget, 500);
        assert!(!idle.go_idle());
        assert_eq!(budget.idle_members(), 1);
        assert_eq!(budget.reclaim(Duration::from_secs(30)), 300, "the idle member's answer");
        assert_eq!(budget.available_bytes(), 300);
        assert!(busy.go_idle(), "the busy member owes a shrink");
        busy.go_busy();
        assert!(!busy.go_idle(), "once");
        busy.go_busy();
        idle.go_busy();
        assert!(!idle.go_idle(), "an idle member asked is not owed too");
        // Nobody idle (and the caller's own member not counted): nothing to wait for.
        idle.go_busy();
        let me = BudgetMember::new(|_| panic!("the caller is never asked"));
        me.runs_on_this_thread();
        assert!(!me.go_idle());
        budget.join(&me);
        let t = Instant::now();
        assert_eq!(budget.reclaim(Duration::from_secs(30)), 0);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!me.go_idle(), "nor marked");
        drop((idle, busy, me));
        assert_eq!(idle_thread.join().unwrap(), 1);
        assert_eq!(busy_thread.join().unwrap(), 0, "a busy member is never woken");
    }

    #[test]
    fn a_member_that_never_answers_costs_the_wait_and_a_gone_one_nothing() {
        let budget = KvBudget::new(10);
        // Keeps every request it is handed, unanswered.
        let kept = Arc::new(Mutex::new(Vec::new()));
        let k = kept.clone();
        let stuck = BudgetMember::new(move |r| {
            k.lock().unwrap().push(r);
            true
        });
        stuck.go_idle();
        budget.join(&stuck);
        let t = Instant::now();
        assert_eq!(budget.reclaim(Duration::from_millis(200)), 0);
        assert!(t.elapsed() >= Duration::from_millis(200));
        kept.lock().unwrap().clear();
        drop(stuck);
        let gone_member = BudgetMember::new(|_| false);
        gone_member.go_idle();
        budget.join(&gone_member);
        let t = Instant::now();
        assert_eq!(budget.reclaim(Duration::from_secs(30)), 0);
        assert!(t.elapsed() < Duration::from_secs(5), "a refused wake answers at once");
        assert_eq!(budget.members.lock().unwrap().len(), 1, "the dropped member left");
    }
}
