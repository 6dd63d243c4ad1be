//! The statuses the step workers write in their rows, which the audit reads back: each
//! named once here, as the databases hold it.

use std::fmt;

/// An enum of names: each variant's text as the database holds it, written once.
macro_rules! named {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The status named `text`, as [`Self::as_str`] writes it.
            pub fn parse(text: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|s| s.as_str() == text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named! {
    /// An order's row in the payment worker (`payments.status`).
    PaymentStatus {
        /// Debited.
        Charged = "CHARGED",
        /// Refused: the balance was too low.
        Declined = "DECLINED",
        /// Debited, then given back.
        Refunded = "REFUNDED",
        /// A refund that came first: the late charge finds it and does nothing.
        Cancelled = "CANCELLED",
    }
}

named! {
    /// An order's row in the inventory worker (`reservations.status`).
    ReservationStatus {
        /// Taken from the stock.
        Reserved = "RESERVED",
        /// Refused: too little stock.
        Refused = "REFUSED",
        /// Taken, then put back.
        Released = "RELEASED",
        /// A release that came first: the late reservation finds it and does nothing.
        Cancelled = "CANCELLED",
    }
}

named! {
    /// An order's row in the delivery worker (`deliveries.status`).
    DeliveryStatus {
        Scheduled = "SCHEDULED",
        /// Cancelled, or a cancel that came before the schedule.
        Cancelled = "CANCELLED",
    }
}

#[cfg(test)]
mod tests;
