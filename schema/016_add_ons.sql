-- Add-ons: Stripe prices and products that are sold beside a plan but grant none (extra
-- storage, seats, a support package). Often they are a subscription of their own: in
-- classic billing mode every item of a subscription bills at one interval, so a yearly plan
-- with a monthly add-on takes two subscriptions.
--
-- The entitlement rule reads a granting subscription none of whose prices is a plan as a
-- configuration gap (a new price nobody has added to public.plans yet) and leaves the
-- customer's plan as it was, marking the event failed. For an add-on's own subscription
-- that froze the plan: a cancelled plan stayed granted while the add-on ran on, and a plan
-- bought after the add-on was never granted. Listing the add-on here tells the rule that
-- its prices grant nothing: an add-on's subscription is then ignored, and a paid renewal
-- whose invoice bills only add-ons leaves the plan's allowance alone.
--
-- Each row names one price (`price_…`, or a legacy plan id) or one product (`prod_…`, all
-- of its prices). The more specific name wins, and a plan wins over an add-on of the same
-- name: a plan's exact price, then an add-on's price, then a plan's product, then an
-- add-on's product. After adding a row, run `python -m webhook reconcile` and
-- `python -m webhook replay --failed`.
create table webhook_private.add_ons (
  id bigint generated always as identity primary key,
  stripe_price_id text unique,
  stripe_product_id text unique,
  description text,
  created_at timestamptz not null default now(),
  constraint add_ons_name_one_price_or_one_product
    check (num_nonnulls(stripe_price_id, stripe_product_id) = 1)
);

revoke all on webhook_private.add_ons from public, anon, authenticated;
