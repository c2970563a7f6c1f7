//! Bank transfers with durable entities: each account is an entity `Account` (its state is its
//! balance, a whole number; operations `deposit`, `withdraw`, `balance`), and the orchestration
//! `Transfer` moves money between two accounts inside a critical section: it locks both
//! accounts, withdraws from one and deposits into the other, then unlocks them. While the
//! section lasts no other operation runs on either account, so no one can see (or spend) the
//! money while it is in flight, and concurrent transfers cannot overdraw an account.
//! `Audit` locks every account it is given and reads all balances at one instant.

use std::collections::BTreeMap;

use duro_sdk::{EntityContext, EntityId, Failure, OrchestrationContext, TaskError, Worker};
use serde::{Deserialize, Serialize};

/// The entity name of accounts.
pub const ACCOUNT: &str = "Account";
/// The transfer orchestration.
pub const TRANSFER: &str = "Transfer";
/// The audit orchestration.
pub const AUDIT: &str = "Audit";

/// The error type of a withdrawal larger than the balance.
pub const INSUFFICIENT_FUNDS: &str = "InsufficientFunds";

/// The account entity of `key`.
pub fn account(key: &str) -> EntityId {
    EntityId::new(ACCOUNT, key)
}

/// The input of [`transfer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// Account to take the money from.
    pub from: String,
    /// Account to put it into.
    pub to: String,
    /// Amount, > 0.
    pub amount: i64,
}

/// What [`transfer`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOutcome {
    /// The money moved; the balances afterwards.
    Completed {
        /// The source account's new balance.
        from_balance: i64,
        /// The destination account's new balance.
        to_balance: i64,
    },
    /// Nothing moved.
    Declined {
        /// Why (e.g. `InsufficientFunds: balance 20 < 80`).
        reason: String,
    },
}

fn amount_of(ctx: &EntityContext) -> Result<i64, Failure> {
    let amount: i64 = ctx.input()?;
    if amount <= 0 {
        return Err(Failure::new("InvalidAmount", format!("amount {amount} must be positive")).non_retriable());
    }
    Ok(amount)
}

/// The account entity: its state is the balance (no state = 0).
pub async fn account_entity(ctx: EntityContext) -> Result<i64, Failure> {
    let balance: i64 = ctx.state_or_default()?;
    let new_balance = match ctx.operation() {
        "deposit" => balance + amount_of(&ctx)?,
        "withdraw" => {
            let amount = amount_of(&ctx)?;
            if amount > balance {
                // Failing the operation leaves the state as it was; the caller gets this error.
                return Err(Failure::new(INSUFFICIENT_FUNDS, format!("balance {balance} < {amount}")));
            }
            balance - amount
        }
        "balance" => return Ok(balance),
        other => return Err(Failure::new("UnknownOperation", format!("accounts have no operation '{other}'"))),
    };
    ctx.set_state(&new_balance)?;
    Ok(new_balance)
}

/// The transfer orchestration: lock both accounts, withdraw, deposit, unlock.
pub async fn transfer(ctx: OrchestrationContext, request: TransferRequest) -> Result<TransferOutcome, Failure> {
    if request.from == request.to {
        return Ok(TransferOutcome::Declined { reason: "the accounts are the same".into() });
    }
    let (from, to) = (account(&request.from), account(&request.to));
    // The critical section: both accounts run only this orchestration's calls until
    // `section` is dropped (at the end of this function, or on an early return).
    let section = ctx.lock_entities([&from, &to]).await?;
    let from_balance = match ctx.call_entity::<i64>(&from, "withdraw", request.amount).await {
        Ok(balance) => balance,
        // An operation's failure comes back as this orchestration's TaskError: nothing moved.
        Err(TaskError::Failed { details, .. }) => return Ok(TransferOutcome::Declined { reason: details.to_string() }),
        Err(other) => return Err(other.into()),
    };
    let to_balance: i64 = ctx.call_entity(&to, "deposit", request.amount).await?;
    section.release();
    Ok(TransferOutcome::Completed { from_balance, to_balance })
}

/// The audit orchestration: locks all the given accounts, then reads every balance, so the
/// balances belong to one instant (no transfer is half done).
pub async fn audit(ctx: OrchestrationContext, keys: Vec<String>) -> Result<BTreeMap<String, i64>, Failure> {
    let accounts: Vec<EntityId> = keys.iter().map(|k| account(k)).collect();
    let _section = ctx.lock_entities(&accounts).await?;
    let reads = accounts.iter().map(|a| ctx.call_entity::<i64>(a, "balance", ())).collect::<Vec<_>>();
    let balances = ctx.when_all(reads).await?;
    Ok(keys.into_iter().zip(balances).collect())
}

/// Registers the entity and the orchestrations on `worker`.
pub fn register(worker: &mut Worker) {
    worker.add_entity(ACCOUNT, account_entity).add_orchestrator(TRANSFER, transfer).add_orchestrator(AUDIT, audit);
}
